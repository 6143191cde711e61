"""Reading finished runs for the paper's tables: what each run is (from `config.json`)
and its scores (from `scores.jsonl`), one row per run and generator, seeds aggregated.

Which evaluation a row reports (`pick`):
  best    each generator's best evaluation: highest IS where the weights had logits (the
          paper's "model parameters at the highest point of IS", Tables 1 and 2), else
          lowest FID
  final   the run's last evaluation (the paper's Table 3: "at the end of learning")
Seeds: runs that differ only in `seed` form one group; IS and FID are then the mean ± the
standard deviation over seeds (ddof = 1) of each generator's numbers.
"""

import dataclasses
import os

import numpy as np

from cgan_jax import configlib
from cgan_jax.errors import ConfigError
from cgan_jax.run import restore
from cgan_jax.run import scores as scores_lib

PICKS = ("best", "final")


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: str
  name: str
  method: str
  sn: bool
  transfer: str
  k: int
  gates_d: str
  gates_transfer: str
  seed: int
  epochs: int
  records: tuple

  @property
  def group(self) -> tuple:
    return (
      self.method,
      self.sn,
      self.transfer,
      self.k,
      self.gates_d,
      self.gates_transfer,
      self.epochs,
    )


def load_run(workdir: str) -> Run:
  """A run's description and scores; one-line ConfigError when either is missing."""
  workdir = workdir.rstrip("/")
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise ConfigError(f"{workdir!r} holds no training run (no config.json)")
  if not os.path.isfile(scores_lib.path(workdir)):
    raise ConfigError(
      f"{workdir!r} has no {scores_lib.FILENAME}: the run has not been evaluated (train it "
      f"with config.eval.enabled and Inception weights)"
    )
  records = scores_lib.read(workdir)
  if not records:
    raise ConfigError(f"{scores_lib.path(workdir)!r} is empty: the run has no evaluation yet")
  c = restore.load_run_config(workdir)
  transfer = c.graph.transfer if c.model.k > 1 else "none"
  return Run(
    workdir=workdir,
    name=os.path.basename(workdir),
    method=c.method,
    sn=configlib.d_norm(c) == "spectral",
    transfer=transfer,
    k=int(c.model.k),
    gates_d=c.graph.get("gates_d", "") or "through",
    gates_transfer=(c.graph.get("gates_transfer", "") or "through") if transfer != "none" else "",
    seed=int(c.seed),
    epochs=int(c.num_epochs),
    records=tuple(records),
  )


def pick_record(run: Run, generator: int, pick: str) -> dict:
  """The evaluation a generator's row reports (see the module doc)."""
  if pick not in PICKS:
    raise ConfigError(f"--pick={pick!r} is not allowed; choose one of: {', '.join(PICKS)}")
  if pick == "final":
    return run.records[-1]
  gens = [r["generators"][generator] for r in run.records]
  if all("is" in g for g in gens):
    return run.records[int(np.argmax([g["is"] for g in gens]))]
  return run.records[int(np.argmin([g["fid"] for g in gens]))]


def mean_std(values: list[float]) -> tuple[float, float | None]:
  """Mean and std over seeds: the sample std (ddof = 1; for two seeds, the range / sqrt 2),
  the one convention of `analyze table` and `reproduce`; None for a single value."""
  a = np.asarray(values, np.float64)
  return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def table_rows(runs: list[Run], pick: str) -> list[dict]:
  """One row per group of seeds and generator (a single seed is a group of one)."""
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    groups.setdefault(run.group, []).append(run)
  rows = []
  for group_runs in groups.values():
    first = group_runs[0]
    for g in range(first.k):
      picked = [pick_record(r, g, pick) for r in group_runs]
      gens = [rec["generators"][g] for rec in picked]
      row = {
        "method": first.method,
        "sn": "yes" if first.sn else "no",
        "transfer": first.transfer,
        "k": first.k,
        "gates_d": first.gates_d,
        "gates_transfer": first.gates_transfer,
        "generator": f"G{g + 1}",
        "runs": " ".join(r.name for r in group_runs),
        "seeds": " ".join(str(r.seed) for r in group_runs),
        "epochs": first.epochs,
        "eval_epochs": " ".join(str(rec["epoch"]) for rec in picked),
        "samples": " ".join(sorted({str(rec["num_samples"]) for rec in picked})),
        "weights": " / ".join(sorted({rec.get("weights", "") for rec in picked})),
      }
      if all("is" in x for x in gens):
        row["is_mean"], row["is_seed_std"] = mean_std([x["is"] for x in gens])
        row["is_split_std"] = float(np.mean([x.get("is_std", 0.0) for x in gens]))
      row["fid_mean"], row["fid_seed_std"] = mean_std([x["fid"] for x in gens])
      for name in extra_metrics(gens):  # every other metric of the registry they all hold
        row[f"{name}_mean"], row[f"{name}_seed_std"] = mean_std([x[name] for x in gens])
      rows.append(row)
  return rows


def extra_metrics(generators: list[dict]) -> list[str]:
  """The registry's metrics beyond IS and FID that every one of `generators` holds."""
  from cgan_jax.quality import registry

  return [n for n in registry.names() if n not in ("is", "fid") and all(n in g for g in generators)]


def _pm(mean: float | None, std: float | None, digits: int) -> str:
  if mean is None:
    return "—"
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def markdown(rows: list[dict], pick: str) -> str:
  head = [
    "method",
    "SN",
    "transfer",
    "k",
    "gates",
    "G",
    "seeds",
    "IS ± std",
    "FID",
  ]
  from cgan_jax.quality import registry

  extra = [
    n for n in registry.names() if n not in ("is", "fid") and any(f"{n}_mean" in r for r in rows)
  ]
  head += [registry.METRICS[n].label for n in extra] + ["epochs", "samples"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    gates = r["gates_d"] + (f" / {r['gates_transfer']}" if r["gates_transfer"] else "")
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
      f"`{gates}`",
      r["generator"],
      r["seeds"],
      is_text,
      _pm(r["fid_mean"], r["fid_seed_std"], 2),
      *(_pm(r.get(f"{n}_mean"), r.get(f"{n}_seed_std"), 4) for n in extra),
      f"{r['eval_epochs']} of {r['epochs']}",
      r["samples"],
    ]
    lines.append("| " + " | ".join(cells) + " |")
  weights = sorted({r["weights"] for r in rows})
  lines += [
    "",
    f"Each row: one generator; its {'best' if pick == 'best' else 'final'} evaluation "
    f"({'highest IS, or lowest FID without IS' if pick == 'best' else 'the last one'}). "
    f"With several seeds: mean ± std over seeds; with one, IS ± the std over its 10 splits. "
    f"'epochs': the evaluated epoch(s) of the trained ones. Weights: {'; '.join(weights)}.",
  ]
  return "\n".join(lines) + "\n"
