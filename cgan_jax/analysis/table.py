"""The results table: one implementation for `analyze table` and `reproduce`.

Which evaluation each run and generator reports (`pick`):
  best      the generator's best evaluation during training: highest IS where the weights
            had logits (the paper's "model parameters at the highest point of IS"), else
            lowest FID
  final     the run's last evaluation (Table 3, section 4.4: "at the end of learning")
  selected  the run's best checkpoint (`best/`, chosen during training by
            config.eval.select: the highest IS of any generator with the full weights, the
            lowest FID with the FID-only ones), scored again with the final evaluation's
            sample count (`selected.json`, written by `reproduce`; Table 1, section 4.2).
            A run without it is "not scored yet".

Three sections, in the markdown and in two csv files (raw numbers, 4 decimals):
  per generator   runs that differ only in `seed` form a group; each generator's picked
                  IS, FID and other metrics, mean ± std over the seeds (the sample std,
                  ddof = 1: `runs.mean_std`); with one seed, IS ± the std over its 10
                  splits, as the paper reports it                          (<name>.csv)
  best generator  per group, each run's best generator by the picked IS (FID without
                  IS), mean ± std over seeds
  per run         one row per run and generator: the picked numbers and their epoch, the
                  final FID, the best FID over the evaluations (its epoch), the epochs, the
                  wall and evaluation minutes                          (<name>_runs.csv)
"""

import csv
import math
import os

import numpy as np

from cgan_jax.analysis.runs import Run, mean_std
from cgan_jax.errors import ConfigError

PICKS = ("best", "final", "selected")

_PICK_TEXT = {
  "best": "its best evaluation during training (highest IS; lowest FID without IS)",
  "final": 'its final evaluation (Table 3\'s rule, section 4.4: "at the end of learning")',
  "selected": (
    "its run's best checkpoint (Table 1's rule, section 4.2: \"the model parameters at "
    'the highest point of IS"), chosen during training by {chooser}, scored again with the '
    "final evaluation's sample count"
  ),
}


def check_pick(pick: str) -> None:
  if pick not in PICKS:
    raise ConfigError(f"--pick={pick!r} is not allowed; choose one of: {', '.join(PICKS)}")


def picked(run: Run, generator: int, pick: str) -> dict | None:
  """The record (epoch, num_samples, generators) a generator's row reports; None for
  'selected' when the run's best checkpoint has not been scored again yet."""
  check_pick(pick)
  if pick == "final":
    return run.records[-1]
  if pick == "best":
    gens = [r["generators"][generator] for r in run.records]
    if all("is" in g for g in gens):
      return run.records[int(np.argmax([g["is"] for g in gens]))]
    return run.records[int(np.argmin([g["fid"] for g in gens]))]
  return run.selected or None  # selected.json: its epoch, num_samples and generators


def extra_metrics(generators: list[dict]) -> list[str]:
  """The registry's metrics beyond IS and FID that every one of `generators` holds."""
  from cgan_jax.quality import registry

  return [n for n in registry.names() if n not in ("is", "fid") and all(n in g for g in generators)]


# What a row says of its run's configuration; runs that differ only in their seed (these
# and num_epochs equal) form a group.
_CONFIG = ("method", "sn", "transfer", "k", "gates_d", "gates_transfer")


def _describe(run: Run) -> dict:
  return {key: getattr(run, key) for key in _CONFIG} | {"sn": "yes" if run.sn else "no"}


def run_rows(runs: list[Run], pick: str) -> list[dict]:
  """One row per run and generator (the 'per run' section)."""
  rows = []
  for run in runs:
    last = run.records[-1]
    for g in range(run.k):
      rec = picked(run, g, pick)
      gen = rec["generators"][g] if rec else {}
      fids = [r["generators"][g]["fid"] for r in run.records]
      finite = [i for i, f in enumerate(fids) if math.isfinite(f)] or list(range(len(fids)))
      best = min(finite, key=fids.__getitem__)  # the first of equals
      row = {
        "run": run.name,
        **_describe(run),
        "seed": run.seed,
        "generator": f"G{g + 1}",
        "is": gen.get("is"),
        "is_std": gen.get("is_std"),
        "fid": gen.get("fid"),
        **{name: gen.get(name) for name in extra_metrics([gen]) if gen},
        "epoch": rec["epoch"] if rec else None,
        "samples": rec["num_samples"] if rec else None,
        "fid_final": fids[-1],
        "fid_best": fids[best],
        "best_epoch": run.records[best]["epoch"],
        "epochs": last["epoch"],
        "num_epochs": run.epochs,
        "eval_samples": " / ".join(str(n) for n in sorted({r["num_samples"] for r in run.records})),
        "finished": run.finished,
        "wall_min": round(run.wall_s / 60, 1) if run.wall_s else None,
        "eval_min": round(run.eval_s / 60, 1),
        "reference": last.get("reference", ""),
        "weights": last.get("weights", ""),
      }
      rows.append(row)
  return rows


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
  """Rows of runs that differ only in their seed, by group (first seen first)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in (*_CONFIG, "num_epochs")), []).append(r)
  return groups


def generator_rows(rows: list[dict]) -> list[dict]:
  """One row per group and generator, seeds aggregated (the 'per generator' section)."""
  out = []
  for group in _groups(rows).values():
    by_g: dict[str, list[dict]] = {}
    for r in group:
      by_g.setdefault(r["generator"], []).append(r)
    for g, members in by_g.items():
      scored = [r for r in members if r["fid"] is not None]
      first = members[0]
      row = {
        **{k: first[k] for k in _CONFIG},
        "generator": g,
        "runs": " ".join(r["run"] for r in members),
        "seeds": " ".join(str(r["seed"]) for r in scored),
        "epochs": first["num_epochs"],
        "eval_epochs": " ".join(str(r["epoch"]) for r in scored),
        "samples": " ".join(sorted({str(r["samples"]) for r in scored})),
        "weights": " / ".join(sorted({r["weights"] for r in scored})),
        "fid_mean": None,
        "fid_seed_std": None,
      }
      if scored and all(r["is"] is not None for r in scored):
        row["is_mean"], row["is_seed_std"] = mean_std([r["is"] for r in scored])
        row["is_split_std"] = float(np.mean([r["is_std"] or 0.0 for r in scored]))
      if scored:
        row["fid_mean"], row["fid_seed_std"] = mean_std([r["fid"] for r in scored])
      for name in extra_metrics(scored) if scored else []:
        row[f"{name}_mean"], row[f"{name}_seed_std"] = mean_std([r[name] for r in scored])
      out.append(row)
  return out


def best_generator_rows(rows: list[dict]) -> list[dict]:
  """Per group, each run's best generator by the picked IS (lowest FID without IS), mean ±
  std over seeds (the 'best generator' section)."""
  out = []
  for group in _groups(rows).values():
    scored = [r for r in group if r["fid"] is not None]
    has_is = bool(scored) and all(r["is"] is not None for r in scored)
    by_run: dict[str, list[dict]] = {}
    for r in scored:
      by_run.setdefault(r["run"], []).append(r)
    # each run's best: the highest IS, or the lowest FID (min keeps the first of equals)
    key = (lambda r: -r["is"]) if has_is else (lambda r: r["fid"])  # noqa: E731
    first, best = group[0], [min(mine, key=key) for mine in by_run.values()]
    row = {
      **{k: first[k] for k in _CONFIG},
      "seeds": ",".join(str(r["seed"]) for r in best),
      "generators": " ".join(r["generator"] for r in best),
      "by": "IS" if has_is else "FID",
      "is_mean": None,
      "is_seed_std": None,
      "fid_mean": None,
      "fid_seed_std": None,
    }
    if has_is:
      row["is_mean"], row["is_seed_std"] = mean_std([r["is"] for r in best])
    if best:
      row["fid_mean"], row["fid_seed_std"] = mean_std([r["fid"] for r in best])
    out.append(row)
  return out


def _pm(mean, std, digits: int) -> str:
  if mean is None:
    return "—"
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _num(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def _gates(r: dict) -> str:
  return "`" + r["gates_d"] + (f" / {r['gates_transfer']}" if r["gates_transfer"] else "") + "`"


def markdown(rows: list[dict], pick: str) -> str:
  """The three sections of `rows` (from `run_rows`) as markdown, with their rules."""
  from cgan_jax.quality import registry

  check_pick(pick)
  grouped = generator_rows(rows)
  extra = [
    n for n in registry.names() if n not in ("is", "fid") and any(f"{n}_mean" in r for r in grouped)
  ]
  head = ["method", "SN", "transfer", "k", "gates", "G", "seeds", "IS ± std", "FID"]
  head += [registry.METRICS[n].label for n in extra] + ["epochs", "samples"]
  lines = [
    "Per generator: mean ± std over seeds.",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for r in grouped:
    if "is_mean" in r:
      # one seed: IS ± the std over IS's 10 splits (as the paper); several: over seeds
      std = r["is_seed_std"] if r["is_seed_std"] is not None else r["is_split_std"]
      is_text = _pm(r["is_mean"], std, 2)
    else:
      is_text = "—"
    cells = [
      r["method"],
      r["sn"],
      r["transfer"],
      str(r["k"]),
      _gates(r),
      r["generator"],
      r["seeds"] or "not scored yet",
      is_text,
      _pm(r["fid_mean"], r["fid_seed_std"], 2),
      *(_pm(r.get(f"{n}_mean"), r.get(f"{n}_seed_std"), 4) for n in extra),
      f"{' '.join(dict.fromkeys(r['eval_epochs'].split()))} of {r['epochs']}",
      r["samples"],
    ]
    lines.append("| " + " | ".join(cells) + " |")

  best = best_generator_rows(rows)
  by = sorted({r["by"] for r in best if r["seeds"]}) or ["FID"]
  lines += [
    "",
    f"Best generator of each run (by {' / '.join(by)}): mean ± std over seeds.",
    "",
    "| method | SN | transfer | k | gates | seeds | G | IS | FID |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in best:
    lines.append(
      f"| {r['method']} | {r['sn']} | {r['transfer']} | {r['k']} | {_gates(r)} "
      f"| {r['seeds'] or 'not scored yet'} | {r['generators']} "
      f"| {_pm(r['is_mean'], r['is_seed_std'], 2)} | {_pm(r['fid_mean'], r['fid_seed_std'], 2)} |"
    )

  lines += [
    "",
    "Per run and generator: the picked IS and FID (and their epoch); the final FID; the best "
    "FID over the evaluations (its epoch); wall minutes (of which evaluation).",
    "",
    "| method | SN | transfer | k | seed | G | IS | FID | epoch | FID final | FID best (epoch) "
    "| epochs | wall min (eval) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    done = str(r["epochs"]) if r["finished"] else f"{r['epochs']} of {r['num_epochs']}"
    fid = _num(r["fid"], ".2f") or ("not scored yet" if r["finished"] else "")
    lines.append(
      f"| {r['method']} | {r['sn']} | {r['transfer']} | {r['k']} | {r['seed']} "
      f"| {r['generator']} | {_num(r['is'], '.2f') or '—'} | {fid} | {_num(r['epoch'], 'd')} "
      f"| {r['fid_final']:.2f} | {r['fid_best']:.2f} ({r['best_epoch']}) | {done} "
      f"| {_num(r['wall_min'], '.1f')} ({r['eval_min']:.1f}) |"
    )

  has_is = all(r["is"] is not None for r in rows if r["fid"] is not None)
  chooser = (
    "the highest IS of any generator"
    if has_is
    else "the lowest FID of any generator, since these Inception weights have no logits for "
    "IS (the paper's rule needs the full weights: config.eval.inception_weights=FILE)"
  )
  samples = sorted({str(r["samples"]) for r in rows if r["samples"] is not None})
  during = sorted({s for r in rows for s in r["eval_samples"].split(" / ")}, key=int)
  lines += [
    "",
    f"Each generator reports {_PICK_TEXT[pick].format(chooser=chooser)}. "
    "Std over seeds: the sample std (ddof = 1; for two seeds, the range / sqrt 2); with one "
    "seed, IS ± the std over its 10 splits. 'epochs' per generator: the picked epoch of each "
    "seed, of the epochs trained.",
    f"IS and FID of {' / '.join(samples) or '—'} samples per generator against "
    f"{'; '.join(sorted({r['reference'] for r in rows}))}; Inception: "
    f"{'; '.join(sorted({r['weights'] for r in rows}))}. FID final and FID best: the "
    f"evaluations during training ({' / '.join(during)} samples).",
  ]
  return "\n".join(lines) + "\n"


def _csv_value(value):
  if isinstance(value, float):
    return f"{value:.4f}"
  return "" if value is None else value


def write(rows: list[dict], pick: str, out: str, name: str) -> tuple[str, list[str]]:
  """`<name>.md`, `<name>.csv` (per generator, seeds aggregated) and `<name>_runs.csv` (per
  run and generator) in `out`; returns the markdown and the paths written."""
  md = markdown(rows, pick)
  paths = [os.path.join(out, f"{name}.md"), os.path.join(out, f"{name}.csv")]
  paths.append(os.path.join(out, f"{name}_runs.csv"))
  with open(paths[0], "w") as f:
    f.write(md)
  for path, table in ((paths[1], generator_rows(rows)), (paths[2], rows)):
    with open(path, "w", newline="") as f:
      fields = list(dict.fromkeys(key for r in table for key in r))
      writer = csv.DictWriter(f, fieldnames=fields)
      writer.writeheader()
      writer.writerows({k: _csv_value(v) for k, v in r.items()} for r in table)
  return md, paths
