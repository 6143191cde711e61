"""Runs a reproduction protocol to the end and writes its table and figures.

  python -m cgan_jax.reproduce --protocol=cpu --out=DIR

Protocols (`PROTOCOLS`):
  cpu   the paper's Table 1 made small for a 2-core CPU (`configs/cifar32_cpu.py`):
        dcgan, dcgan_sn, madgan (k=2) and proposed (k=2, image transfer, through gates),
        2 seeds each, 5 epochs at 32 px, FID of 2,000 samples per generator.
  tiny  the same pipeline on synthetic 16 px data in about a minute (tests).

Each run trains in `DIR/runs/<method>_seed<seed>/` (a normal workdir: checkpoints,
`scores.jsonl`, `samples/`). A method's seeds train together as one population
(`cgan_jax/run/population.py`; each member is the same run as its solo twin, and its
`reproduce_time.json` holds the population's wall time); `--nopopulation` trains them one
after another, seed 0 of every method before seed 1. The command is resumable: a finished
run (its last evaluation is in `scores.jsonl`) is skipped, an unfinished one resumes from
its newest checkpoint. `--export=FOLDER` also copies each finished run's small files (no
checkpoints) there and writes the report there from them: the repository keeps the
measured protocol in `docs/reproduce_cpu/` this way. At the end, and with `--report_only`
at any time, it writes into DIR:

  results.md, results.csv   one row per run and generator: final and best FID, with the
                            epochs, samples, reference, weights and wall time; then mean ±
                            std over seeds of each method's best generator
  fid_curves.png            FID over epochs, one panel per method, a line per seed and
                            generator
  samples.png               the final sample grid of every generator, seed 0, one row per
                            method (the same latents for every generator and method)
"""

import contextlib
import csv
import dataclasses
import json
import os
import sys
import textwrap
import threading
import time

from absl import flags, logging

from cgan_jax import cli, configlib
from cgan_jax.errors import ConfigError, choice_error
from cgan_jax.run import scores as scores_lib

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@dataclasses.dataclass(frozen=True)
class Protocol:
  config: str  # configs/ file and modifiers, e.g. 'cifar32_cpu.py' or 'cifar32_cpu.py:tiny'
  methods: tuple[str, ...]
  seeds: tuple[int, ...]

  def config_spec(self, method: str) -> str:
    path, _, modifiers = self.config.partition(":")
    variants = ",".join(v for v in (method, modifiers) if v)
    return f"{os.path.join(CONFIGS, path)}:{variants}"


METHODS = ("dcgan", "dcgan_sn", "madgan", "proposed")
PROTOCOLS = {
  "cpu": Protocol("cifar32_cpu.py", METHODS, (0, 1)),
  "tiny": Protocol("cifar32_cpu.py:tiny", METHODS, (0, 1)),
}
TIMING = "reproduce_time.json"

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so that importing this module (tests, notebooks)
  next to another CLI module defines no flag twice."""
  flags.DEFINE_enum("protocol", "cpu", list(PROTOCOLS), "Which protocol to run.")
  flags.DEFINE_string("out", None, "Output folder: runs/, results.md/.csv, figures.")
  flags.DEFINE_bool("report_only", False, "Write the table and figures from the runs so far.")
  flags.DEFINE_list("methods", None, "Only these methods (default: all of the protocol's).")
  flags.DEFINE_list("seeds", None, "Only these seeds (default: the protocol's).")
  flags.DEFINE_bool(
    "population",
    True,
    "Train each method's seeds together as one population (cgan_jax/run/population.py); "
    "--nopopulation: one run after another, seed 0 of every method first.",
  )
  flags.DEFINE_string(
    "export",
    None,
    "Also copy each finished run's small files (scores.jsonl, wall time, config, final "
    "sample grids; no checkpoints) to this folder, e.g. docs/reproduce_cpu, and write the "
    "report there from them. Copying its runs/ into an --out folder resumes the protocol "
    "with them counted as done.",
  )


def select(protocol: Protocol, methods, seeds) -> Protocol:
  """The protocol restricted to `methods` / `seeds` (None: all), checked up front."""
  if methods is not None:
    for m in methods:
      if m not in protocol.methods:
        raise choice_error("--methods", m, protocol.methods)
    protocol = dataclasses.replace(protocol, methods=tuple(methods))
  if seeds is not None:
    try:
      protocol = dataclasses.replace(protocol, seeds=tuple(int(s) for s in seeds))
    except ValueError:
      raise ConfigError(f"--seeds={','.join(seeds)!r} must be comma-separated integers") from None
  return protocol


def run_name(method: str, seed: int) -> str:
  return f"{method}_seed{seed}"


def run_config(protocol: Protocol, method: str, seed: int):
  config = configlib.load_config(protocol.config_spec(method))
  config.seed = seed
  configlib.validate_config(config)
  return config


def is_finished(workdir: str) -> bool:
  records = scores_lib.read(workdir)
  return bool(records) and bool(records[-1].get("final"))


class _WallClock:
  """Adds this piece's wall time to `workdir/reproduce_time.json`, every 30 s and at the
  end, so that a piece killed without warning (SIGKILL) loses at most 30 s of its count."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, TIMING)
    self.base = 0.0
    if os.path.isfile(self.path):
      with open(self.path) as f:
        self.base = json.load(f)["wall_s"]
    self._stop = threading.Event()

  def _write(self) -> None:
    if os.path.isdir(os.path.dirname(self.path)):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        json.dump({"wall_s": round(self.base + time.perf_counter() - self.t0, 1)}, f)
      os.replace(tmp, self.path)

  def _loop(self) -> None:
    while not self._stop.wait(30):
      self._write()

  def __enter__(self):
    self.t0 = time.perf_counter()
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._write()


def run_protocol(protocol: Protocol, out: str, population: bool = True) -> None:
  """Trains every run of `protocol` that is not finished yet.

  With `population` (the default) a method's unfinished seeds train together as one
  population (`run.population`, method by method); seeds at different points (one
  resumed, one fresh) train one after another. Without it, seed-major order: seed 0 of
  every method before seed 1.
  """
  if population:
    for method in protocol.methods:
      if not _run_population(protocol, out, method):
        return
    return
  from cgan_jax.run import train

  runs = [(m, s) for s in protocol.seeds for m in protocol.methods]
  for i, (method, seed) in enumerate(runs):
    workdir = os.path.join(out, "runs", run_name(method, seed))
    if is_finished(workdir):
      logging.info("[%d/%d] %s: finished, skipped.", i + 1, len(runs), run_name(method, seed))
      continue
    logging.info("[%d/%d] %s in %s", i + 1, len(runs), run_name(method, seed), workdir)
    config = run_config(protocol, method, seed)
    with _WallClock(workdir):
      train.train_and_evaluate(config, workdir)
    if not is_finished(workdir):  # stopped by a signal: leave the rest for the next start
      logging.warning("%s stopped before its end; re-run the command to resume.", workdir)
      return


def _latest_step(workdir: str):
  folder = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return max(steps, default=None)


def _run_population(protocol: Protocol, out: str, method: str) -> bool:
  """Trains `method`'s unfinished seeds as one population; False when a signal stopped it."""
  from cgan_jax.run import population, train

  seeds = [
    s for s in protocol.seeds if not is_finished(os.path.join(out, "runs", run_name(method, s)))
  ]
  if not seeds:
    logging.info("%s: all seeds finished, skipped.", method)
    return True
  workdirs = [os.path.join(out, "runs", run_name(method, s)) for s in seeds]
  groups: dict = {}
  for seed, workdir in zip(seeds, workdirs, strict=True):
    groups.setdefault(_latest_step(workdir), []).append((seed, workdir))
  for step, members in groups.items():
    where = "from step 0" if step is None else f"from step {step}"
    logging.info(
      "%s: seeds %s as one population (%s).", method, ",".join(str(s) for s, _ in members), where
    )
    configs = [run_config(protocol, method, s) for s, _ in members]
    dirs = [w for _, w in members]
    with contextlib.ExitStack() as stack:
      for w in dirs:
        stack.enter_context(_WallClock(w))
      if len(members) == 1:
        train.train_and_evaluate(configs[0], dirs[0])
      else:
        population.train_population(configs, dirs)
    if not all(is_finished(w) for w in dirs):
      logging.warning("%s stopped before its end; re-run the command to resume.", method)
      return False
  return True


# ---------------------------------------------------------------------------------------
# The report.


def collect(protocol: Protocol, out: str) -> list[dict]:
  """One entry per run of the protocol that has at least one evaluation."""
  entries = []
  for seed in protocol.seeds:
    for method in protocol.methods:
      workdir = os.path.join(out, "runs", run_name(method, seed))
      records = scores_lib.read(workdir)
      if not records:
        continue
      config = configlib.load_config(protocol.config_spec(method))
      wall = None
      if os.path.isfile(os.path.join(workdir, TIMING)):
        with open(os.path.join(workdir, TIMING)) as f:
          wall = json.load(f)["wall_s"]
      entries.append(
        {
          "method": method,
          "seed": seed,
          "workdir": workdir,
          "config": config,
          "records": records,
          "finished": bool(records[-1].get("final")),
          "wall_s": wall,
          "eval_s": sum(r.get("eval_s", 0.0) for r in records),
        }
      )
  if not entries:
    raise ConfigError(f"--out={out!r}: no run there has a scores.jsonl yet; run the protocol")
  return entries


def _mean_std(values: list[float]) -> str:
  import numpy as np

  v = np.asarray(values, np.float64)
  return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def _table_rows(entries: list[dict]) -> list[dict]:
  rows = []
  for e in entries:
    c, last = e["config"], e["records"][-1]
    for g in range(len(last["generators"])):
      fids = [r["generators"][g]["fid"] for r in e["records"]]
      best = min(range(len(fids)), key=fids.__getitem__)
      rows.append(
        {
          "method": e["method"],
          "sn": configlib.d_norm(c) == "spectral",
          "transfer": c.graph.transfer,
          "k": c.model.k,
          "seed": e["seed"],
          "generator": f"G{g + 1}",
          # Raw: every number shown is rounded once, from these (results.csv: 4 decimals).
          "fid_final": fids[-1],
          "fid_best": fids[best],
          "best_epoch": e["records"][best]["epoch"],
          "epochs": last["epoch"],
          "finished": e["finished"],
          "samples": last["num_samples"],
          "reference": last["reference"],
          "weights": last["weights"],
          "wall_min": round(e["wall_s"] / 60, 1) if e["wall_s"] else "",
          "eval_min": round(e["eval_s"] / 60, 1),
        }
      )
  return rows


def write_table(entries: list[dict], out: str) -> str:
  """results.csv and results.md; returns the markdown."""
  rows = _table_rows(entries)
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    for r in rows:
      writer.writerow({**r, **{key: f"{r[key]:.4f}" for key in ("fid_final", "fid_best")}})
  lines = [
    "| method | SN | transfer | k | seed | G | FID final | FID best (epoch) | epochs | wall min "
    "(eval) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    done = "" if r["finished"] else " (unfinished)"
    lines.append(
      f"| {r['method']} | {'yes' if r['sn'] else 'no'} | {r['transfer']} | {r['k']} "
      f"| {r['seed']} | {r['generator']} | {r['fid_final']:.1f} | {r['fid_best']:.1f} "
      f"({r['best_epoch']}) | {r['epochs']}{done} | {r['wall_min']} ({r['eval_min']}) |"
    )
  lines += [
    "",
    "Per method, the best generator of each run (lowest final FID), mean ± std over seeds:",
    "",
    "| method | seeds | FID final, best G | FID best over evaluations, best G |",
    "|---|---|---|---|",
  ]
  for method in dict.fromkeys(r["method"] for r in rows):
    runs = {}
    for r in rows:
      if r["method"] == method and r["finished"]:
        final, best = runs.get(r["seed"], (float("inf"), float("inf")))
        runs[r["seed"]] = (min(final, r["fid_final"]), min(best, r["fid_best"]))
    if runs:
      finals, bests = zip(*runs.values(), strict=True)
      seeds = ",".join(str(s) for s in runs)
      lines.append(f"| {method} | {seeds} | {_mean_std(finals)} | {_mean_std(bests)} |")
  r0 = rows[0]
  lines += [
    "",
    f"FID of {r0['samples']} samples per generator against {r0['reference']}; "
    f"Inception: {r0['weights']}.",
  ]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(text)
  return text


def plot_curves(entries: list[dict], out: str) -> str:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  methods = list(dict.fromkeys(e["method"] for e in entries))
  fig, axes = plt.subplots(
    1, len(methods), figsize=(4 * len(methods), 3.6), sharey=True, squeeze=False
  )
  styles = ["-", "--", ":", "-."]
  for ax, method in zip(axes[0], methods, strict=True):
    for e in (e for e in entries if e["method"] == method):
      epochs = [r["epoch"] for r in e["records"]]
      for g in range(len(e["records"][-1]["generators"])):
        fids = [r["generators"][g]["fid"] for r in e["records"]]
        ax.plot(
          epochs,
          fids,
          styles[g % len(styles)],
          marker="o",
          color=f"C{e['seed']}",
          label=f"seed {e['seed']}, G{g + 1}",
        )
    ax.set_title(method)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("FID (lower is better)")
  last = entries[0]["records"][-1]
  title = f"FID of {last['num_samples']} samples per generator vs {last['reference']}; "
  title += last["weights"]
  fig.suptitle(textwrap.fill(title, 48 * len(methods)), fontsize=8)  # within the panels
  fig.tight_layout()
  path = os.path.join(out, "fid_curves.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_samples(entries: list[dict], out: str) -> str:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from PIL import Image

  seed = min(e["seed"] for e in entries)
  chosen = [e for e in entries if e["seed"] == seed]
  cols = max(e["config"].model.k for e in chosen)
  fig, axes = plt.subplots(
    len(chosen), cols, figsize=(3.2 * cols, 3.4 * len(chosen)), squeeze=False
  )
  for row, e in zip(axes, chosen, strict=True):
    step = e["records"][-1]["step"]
    for g, ax in enumerate(row):
      ax.axis("off")
      path = os.path.join(e["workdir"], "samples", f"step_{step:08d}_g{g}.png")
      if g < e["config"].model.k and os.path.isfile(path):
        ax.imshow(Image.open(path))
        ax.set_title(f"{e['method']} G{g + 1}, epoch {e['records'][-1]['epoch']}", fontsize=9)
  title = f"Final samples, seed {seed}; the same latents for every generator"
  fig.suptitle(textwrap.fill(title, 34 * cols), fontsize=9)
  fig.tight_layout()
  path = os.path.join(out, "samples.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


RUN_FILES = (scores_lib.FILENAME, TIMING, "config.json")
REPORT_FILES = ("results.md", "results.csv", "fid_curves.png", "samples.png")


def export(protocol: Protocol, out: str, dest: str) -> list[str]:
  """Copies the small files of every finished run to `dest` and writes its report there.

  Per run: `scores.jsonl`, the wall time, `config.json` and the sample grids of its last
  evaluation (what `report` reads); no checkpoints. The report in `dest` is then built
  from exactly those files, so it never shows a run that is not there. Returns the
  paths written.
  """
  import shutil

  copied = []
  for e in collect(protocol, out):
    if not e["finished"]:
      continue
    src = e["workdir"]
    dst = os.path.join(dest, "runs", os.path.basename(src))
    os.makedirs(os.path.join(dst, "samples"), exist_ok=True)
    step = e["records"][-1]["step"]
    names = [n for n in RUN_FILES if os.path.isfile(os.path.join(src, n))]
    names += [
      os.path.join("samples", f"step_{step:08d}_g{g}.png") for g in range(e["config"].model.k)
    ]
    for name in names:
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      copied.append(os.path.join(dst, name))
  report(protocol, dest)
  return copied + [os.path.join(dest, name) for name in REPORT_FILES]


def report(protocol: Protocol, out: str) -> str:
  entries = collect(protocol, out)
  text = write_table(entries, out)
  plot_curves(entries, out)
  plot_samples(entries, out)
  return text


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.out:
    cli.fail("--out is required, e.g. --out=workdirs/reproduce_cpu")
  protocol = select(PROTOCOLS[FLAGS.protocol], FLAGS.methods, FLAGS.seeds)
  if not FLAGS.report_only:
    run_protocol(protocol, FLAGS.out, population=FLAGS.population)
  text = report(protocol, FLAGS.out)
  print(text)
  print(f"Wrote results.md, results.csv, fid_curves.png and samples.png to {FLAGS.out}")
  if FLAGS.export:
    copied = export(protocol, FLAGS.out, FLAGS.export)
    print(f"Exported {len(copied)} files (no checkpoints) to {FLAGS.export}")
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  cli.run(main)
