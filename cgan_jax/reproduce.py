"""Runs a reproduction protocol to the end and writes its table and figures.

  python -m cgan_jax.reproduce --protocol=cpu --out=DIR

Protocols (`PROTOCOLS`):
  cpu   the paper's Table 1 made small for a 2-core CPU (`configs/cifar32_cpu.py`):
        dcgan, dcgan_sn, madgan (k=2) and proposed (k=2, image transfer, through gates),
        2 seeds each, 5 epochs at 32 px, FID of 2,000 samples per generator.
  tiny  the same pipeline on synthetic 16 px data in about a minute (tests).
  paper         Table 1 at the paper's setting (`configs/paper.py`: 64 px, batch 256,
                200 epochs, IS/FID of 10,000 samples per generator every 10 epochs and of
                50,000 at the end): dcgan, dcgan_sn, madgan (k=2) and proposed (k=2,
                image transfer), seeds 0, 1, 2; each run is scored at its highest-IS
                checkpoint (the "selected" rule below).
  paper_table3  Table 3: dcgan, dcgan_sn, madgan3 and proposed3 (k=3), scored at the end.
                `--gates_d=... --gates_transfer=...` give the proposed runs the gates of
                a searched graph (`cgan_jax.search` writes them in best.md).
  paper_tiny, paper_table3_tiny   the same protocols on synthetic 16 px data (tests).

  python -m cgan_jax.reproduce --protocol=paper --out=DIR --plan_only

prints each method's runs, steps, evaluations and Inception images, with an H200 time
estimate from the measured step times (`H200_STEP_MS`), and exits. `--set=FIELD=VALUE`
(repeatable) changes a config field of every run, e.g. `--set=data.source=cifar_archive`
or `--set=eval.inception_weights=FILE`; it is checked before anything trains. During
training, every evaluation of a method's first seed prints the ms per run-step so far and
the ETA of the method and the protocol.

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

  results.md, results.csv,  the table of `python -m cgan_jax.analyze table` (one
  results_runs.csv          implementation: `analysis.table`), with the protocol's rule as
                            its pick: per generator, mean ± std over seeds (sample std,
                            ddof = 1); each method's best generator per run, mean ± std;
                            per run and generator the picked IS/FID, the final and best
                            FID, the epochs and the wall time
  fid_curves.png            FID (and IS) over epochs, one panel per method, a line per seed
                            and generator
  samples.png               the final sample grid of every generator, seed 0, one row per
                            method (the same latents for every generator and method)
"""

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time

import ml_collections
from absl import flags, logging

from cgan_jax import cli, configlib
from cgan_jax.analysis import runs as runs_lib
from cgan_jax.errors import ConfigError, check_writable, choice_error
from cgan_jax.run import scores as scores_lib

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# How results.md picks each run's numbers (`Protocol.rule`, the table's pick):
#   selected  Table 1 (section 4.2: "the model parameters at the highest point of IS"): the
#             run's best checkpoint (`best/`: highest IS with the full Inception weights,
#             lowest FID with the FID-only ones), scored again with the final evaluation's
#             sample count into `selected.json` (nothing to do when the final evaluation
#             is the best one);
#   final     Table 3 (section 4.4: "at the end of learning"): the final evaluation.
#   (the table always shows the final FID and the best FID over the evaluations too).
RULES = ("selected", "final")
SELECTED = runs_lib.SELECTED


@dataclasses.dataclass(frozen=True)
class Protocol:
  config: str  # configs/ file and modifiers, e.g. 'cifar32_cpu.py' or 'cifar32_cpu.py:tiny'
  methods: tuple[str, ...]
  seeds: tuple[int, ...]
  rule: str = "final"  # one of RULES
  # Given on the command line (`--set`, `--gates_d`, `--gates_transfer`), for every run:
  overrides: tuple[tuple[str, str], ...] = ()  # (config field, value)
  gates: tuple[str, str] = ("", "")  # (gates_d, gates_transfer) of the `proposed` methods

  def config_spec(self, method: str) -> str:
    path, _, modifiers = self.config.partition(":")
    variants = ",".join(v for v in (method, modifiers) if v)
    return f"{os.path.join(CONFIGS, path)}:{variants}"


METHODS = ("dcgan", "dcgan_sn", "madgan", "proposed")
TABLE3 = ("dcgan", "dcgan_sn", "madgan3", "proposed3")
PROTOCOLS = {
  "cpu": Protocol("cifar32_cpu.py", METHODS, (0, 1)),
  "tiny": Protocol("cifar32_cpu.py:tiny", METHODS, (0, 1)),
  "paper": Protocol("paper.py", METHODS, (0, 1, 2), rule="selected"),
  "paper_table3": Protocol("paper.py", TABLE3, (0, 1, 2), rule="final"),
  "paper_tiny": Protocol("paper.py:tiny", METHODS, (0, 1), rule="selected"),
  "paper_table3_tiny": Protocol("paper.py:tiny", TABLE3, (0, 1), rule="final"),
}
TIMING = runs_lib.TIMING

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
  flags.DEFINE_multi_string(
    "set",
    [],
    "FIELD=VALUE: a config field for every run, e.g. --set=data.source=cifar_archive (the "
    "offline CIFAR-10 archive) or --set=eval.inception_weights=FILE; repeatable.",
  )
  flags.DEFINE_string(
    "gates_d",
    "",
    "The proposed methods' adversarial gates (config.graph.gates_d), e.g. a "
    "searched graph's; default: 'through' on every edge.",
  )
  flags.DEFINE_string(
    "gates_transfer",
    "",
    "The proposed methods' transfer gates (config.graph.gates_transfer), "
    "k x k with ';' between rows; default: 'through' on every edge.",
  )
  flags.DEFINE_bool("plan_only", False, "Print the plan (runs, steps, evaluations) and exit.")


def select(protocol: Protocol, methods, seeds, overrides=(), gates=("", "")) -> Protocol:
  """The protocol restricted to `methods` / `seeds` (None: all), with the command line's
  config `overrides` ('FIELD=VALUE' strings) and `gates`, checked up front: a mistake is
  one error line before anything trains."""
  parsed = []
  for item in overrides:
    field, sep, value = item.partition("=")
    if not sep or not field.strip():
      raise ConfigError(f"--set={item!r} must be FIELD=VALUE, e.g. data.source=cifar_archive")
    parsed.append((field.strip(), value))
  protocol = dataclasses.replace(protocol, overrides=tuple(parsed), gates=tuple(gates))
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
  for method in protocol.methods:  # every field, value and gate string, once per method
    run_config(protocol, method, protocol.seeds[0] if protocol.seeds else 0)
  return protocol


def run_name(method: str, seed: int) -> str:
  return f"{method}_seed{seed}"


def _override(config, field: str, value: str) -> None:
  """config.FIELD = VALUE, converted to the field's type (`--set`)."""
  flag = f"--set={field}={value}"
  node, names = config, field.split(".")
  for name in names[:-1]:
    node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
  leaf = names[-1]
  if (
    not isinstance(node, ml_collections.ConfigDict)
    or leaf not in node
    or isinstance(node[leaf], ml_collections.ConfigDict)
  ):
    raise ConfigError(
      f"{flag}: the config has no field {field!r} (list them with python -m cgan_jax.main "
      "--config=configs/paper.py --print_config)"
    )
  old = node[leaf]
  try:
    if isinstance(old, bool):
      if value.lower() not in ("true", "false"):
        raise ValueError
      new = value.lower() == "true"
    elif isinstance(old, int | float):
      new = type(old)(value)
    else:
      new = value
  except ValueError:
    kind = "true or false" if isinstance(old, bool) else f"a {type(old).__name__}"
    raise ConfigError(f"{flag}: config.{field} takes {kind}") from None
  node[leaf] = new


def run_config(protocol: Protocol, method: str, seed: int):
  config = configlib.load_config(protocol.config_spec(method))
  for field, value in protocol.overrides:
    _override(config, field, value)
  gates_d, gates_transfer = protocol.gates
  if config.method == "proposed":
    config.graph.gates_d = gates_d or config.graph.gates_d
    config.graph.gates_transfer = gates_transfer or config.graph.gates_transfer
  config.seed = seed
  try:
    configlib.validate_config(config)
  except ConfigError as e:
    flag = next(
      (
        f
        for f, value in (("--gates_d", gates_d), ("--gates_transfer", gates_transfer))
        if value and f"config.graph.{f[2:]}" in str(e)
      ),
      None,
    )
    raise ConfigError(f"{flag} (method {method}): {e}" if flag else f"{method}: {e}") from None
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


# ---------------------------------------------------------------------------------------
# The plan and the estimates.

# Measured on one H200 (benchmarks/README.md, "One H200, 2026-12-04"), at the paper's
# setting only (64 px, batch 256, widths 64): ms per training step by (k, transfer kind),
# the step alone; the training loop (input pipeline, logging) ran 1.04x the step
# (90 steps/s against 10.7 ms for k = 2); Inception images per second.
H200_STEP_MS = {
  (1, "none"): 5.2,
  (2, "none"): 10.7,
  (2, "image"): 10.7,
  (3, "none"): 15.8,
  (3, "image"): 15.8,
  (3, "feature"): 25.7,
}
H200_LOOP_FACTOR = 1.04
H200_INCEPTION_IMG_S = 14_552
CIFAR_TRAIN = 50_000


def _transfer_kind(config) -> str:
  t = config.graph.transfer
  return "none" if t == "none" else ("image" if t == "image" else "feature")


def _num_images(config) -> int:
  if config.data.source == "synthetic":
    return config.data.num_train or 1024
  return min(config.data.num_train or CIFAR_TRAIN, CIFAR_TRAIN)


def run_plan(config) -> dict:
  """What one run of `config` does: steps, evaluations, Inception images, H200 minutes."""
  spe = _num_images(config) // config.train.batch_size
  steps = spe * config.num_epochs
  every = config.eval.every_epochs
  intermediate = sum(1 for e in range(1, config.num_epochs) if e % every == 0)
  k = config.model.k
  images = k * (intermediate * config.eval.num_samples + config.eval.final_num_samples)
  paper_setting = (
    config.data.image_size == 64
    and config.train.batch_size == 256
    and config.model.g_width == config.model.d_width == 64
  )
  ms = H200_STEP_MS.get((k, _transfer_kind(config))) if paper_setting else None
  return {
    "k": k,
    "steps": steps,
    "steps_per_epoch": spe,
    "evaluations": intermediate + 1,
    "images": images,
    "step_ms_h200": ms,
  }


def plan(protocol: Protocol, out: str) -> str:
  """The protocol's plan, before anything trains: what is left to do, and an estimate of
  its time on one H200 where the setting is the one measured there."""
  lines = [
    f"Plan: {len(protocol.methods)} methods x {len(protocol.seeds)} seeds "
    f"({', '.join(str(s) for s in protocol.seeds)}) in {out}; results by the "
    f"{protocol.rule!r} rule.",
    "| method | k | transfer | runs left | steps per run | evaluations per run | "
    "Inception images | H200 estimate, min |",
    "|---|---|---|---|---|---|---|---|",
  ]
  total_min, total_images, unknown = 0.0, 0, False
  for method in protocol.methods:
    config = run_config(protocol, method, protocol.seeds[0])
    p = run_plan(config)
    left = [
      s for s in protocol.seeds if not is_finished(os.path.join(out, "runs", run_name(method, s)))
    ]
    images = len(left) * p["images"]
    if protocol.rule == "selected":  # the best checkpoint scored again, at most once per run
      images += len(left) * p["k"] * config.eval.final_num_samples
    if p["step_ms_h200"] is None:
      estimate, unknown = "-", True
    else:
      minutes = len(left) * p["steps"] * p["step_ms_h200"] * H200_LOOP_FACTOR / 60_000
      minutes += images / H200_INCEPTION_IMG_S / 60
      total_min += minutes
      estimate = f"{minutes:.1f}"
    total_images += images
    lines.append(
      f"| {method} | {p['k']} | {config.graph.transfer} | {len(left)} | {p['steps']:,} "
      f"| {p['evaluations']} | {images:,} | {estimate} |"
    )
  lines.append(
    f"Total: {total_images:,} generated images through Inception, plus the reference "
    "statistics (computed once per reference and cached)."
  )
  if unknown:
    lines.append(
      "No H200 estimate where the setting is not the measured one (64 px, batch 256, widths 64)."
    )
  if total_min:
    lines.append(
      f"Estimate on one H200: {total_min:.0f} min (an estimate from the step and Inception "
      "rates measured there, benchmarks/README.md; seeds one after another, as a "
      "population of the default sequential form does)."
    )
  return "\n".join(lines)


class _Eta:
  """Prints the remaining time of a method and of the protocol after each evaluation of
  its first member (the training log already prints each run's steps/s and ETA once per
  `log_every_steps`), from the rate measured so far: this method's wall time per step,
  scaled to the methods still to come by their step-time ratio on the H200."""

  def __init__(self, protocol: Protocol, out: str, method: str, start_step: int, seeds: int):
    self.protocol, self.out, self.method = protocol, out, method
    self.start_step, self.seeds = start_step or 0, seeds
    self.config = run_config(protocol, method, protocol.seeds[0])
    self.t0 = time.perf_counter()

  def _relative(self, config) -> float:
    here = run_plan(self.config)
    there = run_plan(config)
    key_here = H200_STEP_MS.get((here["k"], _transfer_kind(self.config)))
    key_there = H200_STEP_MS.get((there["k"], _transfer_kind(config)))
    if key_here and key_there:
      return key_there / key_here
    return there["k"] / here["k"]  # step time grows about linearly with k (the H200 table)

  def __call__(self, record) -> bool:
    done = record["step"] - self.start_step
    if done <= 0:
      return False
    per_step = (time.perf_counter() - self.t0) / done  # this method's seeds, all in
    total = run_plan(self.config)["steps"]
    left = per_step * (total - record["step"])
    later = 0.0
    methods = self.protocol.methods
    for m in methods[methods.index(self.method) + 1 :]:
      config = run_config(self.protocol, m, self.protocol.seeds[0])
      seeds = [
        s
        for s in self.protocol.seeds
        if not is_finished(os.path.join(self.out, "runs", run_name(m, s)))
      ]
      later += (
        per_step / self.seeds * len(seeds) * self._relative(config) * run_plan(config)["steps"]
      )
    print(
      f"[{self.method}] epoch {record['epoch']}, step {record['step']:,}/{total:,}: "
      f"{per_step * 1000 / self.seeds:.1f} ms per run-step so far; ETA {left / 60:.1f} min "
      f"for this method, {(left + later) / 60:.1f} min for the protocol (estimated).",
      flush=True,
    )
    return False


def score_selected(workdir: str) -> dict:
  """Table 1's number for a finished run: its best checkpoint (`best/`, chosen during
  training by config.eval.select: highest IS with the full weights, lowest FID with the
  FID-only ones), with the final evaluation's sample count. Written to `selected.json`
  (read back on the next call): the final record when that is the best one, else the
  best checkpoint scored again by `cgan_jax.evaluate`."""
  path = os.path.join(workdir, SELECTED)
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  from cgan_jax.run import checkpointing

  records = scores_lib.read(workdir)
  final = records[-1]
  best = checkpointing.best_steps(workdir)  # what training kept, ties settled by orbax
  chosen = next((r for r in records if best and r["step"] == max(best)), None)
  chosen = chosen or selected_record(records)
  result = {
    "rule": selection_rule(records),
    "epoch": chosen["epoch"],
    "step": chosen["step"],
    "chosen_with_samples": chosen["num_samples"],
    "num_samples": final["num_samples"],
    "generators": chosen["generators"],
  }
  if chosen is not final:
    from cgan_jax import evaluate
    from cgan_jax.run import restore

    if not best:
      raise ConfigError(
        f"{workdir}: no best/ checkpoint to score; score step {chosen['step']} with "
        "python -m cgan_jax.evaluate --checkpoint=STEP if checkpoints/ still holds it"
      )
    logging.info(
      "%s: scoring the selected checkpoint (step %d) with %d samples per generator.",
      workdir,
      chosen["step"],
      final["num_samples"],
    )
    config = restore.load_run_config(workdir)
    _, scores = evaluate.evaluate_run(
      workdir, "best", num_samples=final["num_samples"], batch_size=config.eval.batch_size
    )
    result["generators"] = scores
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, path)
  return result


def selection_rule(records) -> str:
  has_is = all("is" in g for r in records for g in r["generators"])
  return "highest IS" if has_is else "lowest FID (FID-only Inception weights: no IS)"


def selected_record(records) -> dict:
  """The evaluation that config.eval.select='auto' keeps in best/: the highest IS of any
  generator with the full weights, else the lowest FID (the first of equals; non-finite
  values never)."""
  import math

  if all("is" in g for r in records for g in r["generators"]):
    key = lambda r: max(g["is"] for g in r["generators"])  # noqa: E731
    sign = 1
  else:
    key = lambda r: min(g["fid"] for g in r["generators"])  # noqa: E731
    sign = -1
  finite = [r for r in records if math.isfinite(key(r))]
  return max(finite or records, key=lambda r: sign * key(r))


def run_protocol(protocol: Protocol, out: str, population: bool = True) -> None:
  """Trains every run of `protocol` that is not finished yet.

  With `population` (the default) a method's unfinished seeds train together as one
  population (`run.population`, method by method), each seed from its own checkpoint
  (one resumed, one fresh: still one population). Without it, seed-major order: seed 0 of
  every method before seed 1.
  """
  if population:
    for method in protocol.methods:
      if not _run_population(protocol, out, method):
        return
    _score_selected(protocol, out)
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
    eta = _Eta(protocol, out, method, _latest_step(workdir), 1)
    with _WallClock(workdir):
      train.train_and_evaluate(config, workdir, callbacks=[eta])
    if not is_finished(workdir):  # stopped by a signal: leave the rest for the next start
      logging.warning("%s stopped before its end; re-run the command to resume.", workdir)
      return
  _score_selected(protocol, out)


def _score_selected(protocol: Protocol, out: str) -> None:
  """Under the 'selected' rule, every finished run's `selected.json` (`score_selected`)."""
  if protocol.rule != "selected":
    return
  for method in protocol.methods:
    for seed in protocol.seeds:
      workdir = os.path.join(out, "runs", run_name(method, seed))
      if is_finished(workdir):
        score_selected(workdir)


def _latest_step(workdir: str):
  from cgan_jax.run import checkpointing

  return max(checkpointing.latest_steps(workdir), default=None)


def _run_population(protocol: Protocol, out: str, method: str) -> bool:
  """Trains `method`'s unfinished seeds as one population; False when a signal stopped it."""
  from cgan_jax.run import population, train

  seeds = [
    s for s in protocol.seeds if not is_finished(os.path.join(out, "runs", run_name(method, s)))
  ]
  if not seeds:
    logging.info("%s: all seeds finished, skipped.", method)
    return True
  dirs = [os.path.join(out, "runs", run_name(method, s)) for s in seeds]
  steps = [_latest_step(w) for w in dirs]
  where = ", ".join(f"seed {s} from step {t or 0}" for s, t in zip(seeds, steps, strict=True))
  logging.info("%s: seeds %s as one population (%s).", method, ",".join(map(str, seeds)), where)
  configs = [run_config(protocol, method, s) for s in seeds]
  eta = _Eta(protocol, out, method, steps[0], len(seeds))  # from member 0's evaluations
  with contextlib.ExitStack() as stack:
    for w in dirs:
      stack.enter_context(_WallClock(w))
    if len(seeds) == 1:
      train.train_and_evaluate(configs[0], dirs[0], callbacks=[eta])
    else:  # each member resumes at its own checkpoint
      population.train_population(
        configs, dirs, callbacks=[lambda m, record, eta=eta: m == 0 and eta(record)]
      )
  if not all(is_finished(w) for w in dirs):
    logging.warning("%s stopped before its end; re-run the command to resume.", method)
    return False
  return True


# ---------------------------------------------------------------------------------------
# The report.


def collect(protocol: Protocol, out: str) -> list:
  """The protocol's runs (`analysis.runs.Run`) that have at least one evaluation, seed by
  seed, method by method."""
  found = []
  for seed in protocol.seeds:
    for method in protocol.methods:
      workdir = os.path.join(out, "runs", run_name(method, seed))
      if scores_lib.read(workdir):
        found.append(runs_lib.load_run(workdir))
  if not found:
    raise ConfigError(f"--out={out!r}: no run there has a scores.jsonl yet; run the protocol")
  return found


def write_table(runs: list, out: str, rule: str = "final") -> str:
  """results.md, results.csv (per generator, seeds aggregated) and results_runs.csv (per run
  and generator): `analysis.table`, the implementation of `analyze table`, with the
  protocol's rule as its pick. Returns the markdown."""
  from cgan_jax.analysis import table

  md, _ = table.write(table.run_rows(runs, rule), rule, out, "results")
  return md


def plot_curves(runs: list, out: str) -> str:
  """fid_curves.png: a panel per method (and metric), a colour per seed."""
  from cgan_jax.analysis import figures

  return figures.curves_figure(runs, out, panels="method", name="fid_curves.png")


def plot_samples(runs: list, out: str) -> str:
  """samples.png: the lowest seed's runs' last sample grids, a row per method."""
  from cgan_jax.analysis import figures

  seed = min(r.seed for r in runs)
  return figures.grids_figure([r for r in runs if r.seed == seed], out, name="samples.png")


RUN_FILES = (scores_lib.FILENAME, TIMING, "config.json", SELECTED)
REPORT_FILES = ("results.md", "results.csv", "results_runs.csv", "fid_curves.png", "samples.png")


def export(protocol: Protocol, out: str, dest: str) -> list[str]:
  """Copies the small files of every finished run to `dest` and writes its report there.

  Per run: `scores.jsonl`, the wall time, `config.json` and the sample grids of its last
  evaluation (what `report` reads); no checkpoints. The report in `dest` is then built
  from exactly those files, so it never shows a run that is not there. Returns the
  paths written.
  """
  import shutil

  copied = []
  for run in collect(protocol, out):
    if not run.finished:
      continue
    src = run.workdir
    dst = os.path.join(dest, "runs", os.path.basename(src))
    os.makedirs(os.path.join(dst, "samples"), exist_ok=True)
    step = run.records[-1]["step"]
    names = [n for n in RUN_FILES if os.path.isfile(os.path.join(src, n))]
    names += [os.path.join("samples", f"step_{step:08d}_g{g}.png") for g in range(run.k)]
    for name in names:
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      copied.append(os.path.join(dst, name))
  report(protocol, dest)
  return copied + [os.path.join(dest, name) for name in REPORT_FILES]


def report(protocol: Protocol, out: str) -> str:
  runs = collect(protocol, out)
  text = write_table(runs, out, protocol.rule)
  plot_curves(runs, out)
  plot_samples(runs, out)
  return text


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.out:
    cli.fail("--out is required, e.g. --out=workdirs/reproduce_cpu")
  if not FLAGS.plan_only:  # named as --out, before any run's --workdir inside it is
    check_writable(FLAGS.out, "--out")
  protocol = select(
    PROTOCOLS[FLAGS.protocol],
    FLAGS.methods,
    FLAGS.seeds,
    FLAGS.set,
    (FLAGS.gates_d, FLAGS.gates_transfer),
  )
  if FLAGS.plan_only or not FLAGS.report_only:
    print(plan(protocol, FLAGS.out), flush=True)
    if FLAGS.plan_only:
      return
    run_protocol(protocol, FLAGS.out, population=FLAGS.population)
  text = report(protocol, FLAGS.out)
  print(text)
  print(f"Wrote {', '.join(REPORT_FILES)} to {FLAGS.out}")
  if FLAGS.export:
    copied = export(protocol, FLAGS.out, FLAGS.export)
    print(f"Exported {len(copied)} files (no checkpoints) to {FLAGS.export}")
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  cli.run(main)
