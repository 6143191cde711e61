"""The training loop: data, steps, sample grids, evaluation, checkpoints, logging.

`train_and_evaluate(config, workdir, callbacks=())` validates everything a user can get
wrong (config, data, devices, workdir) before it writes a byte, then trains for
`config.num_epochs`, resuming from the newest readable checkpoint in the workdir. The
models, state and jitted step come from `builder.build`, once per structure and process.
It returns a `RunResult`: the final state, the run's `scores.jsonl` records and why it
stopped.
"""

import datetime
import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from cgan_jax import configlib
from cgan_jax.core import state as state_lib
from cgan_jax.errors import ConfigError, check_writable
from cgan_jax.run import builder, checkpointing, generate, input_pipeline, writers
from cgan_jax.run import evaluation as evaluator_lib
from cgan_jax.run import scores as scores_lib
from cgan_jax.run import stop as stop_lib

# Fields that fix the shapes of the state or the meaning of a step: a workdir trained with
# one value cannot be resumed with another (those marked `resume` in `configlib.FIELDS`;
# a field missing from an older saved config has the table's default).
STRUCTURAL_FIELDS = configlib.RESUME_FIELDS

# callback(record) after each evaluation, with its `scores.jsonl` record; True asks the
# run to stop (it saves a checkpoint and returns).
Callback = Callable[[dict], bool | None]


class RunResult(NamedTuple):
  """What `train_and_evaluate` returns.

  Attributes:
    state: the final `GANState`.
    scores: the run's `scores.jsonl` records, oldest first (all pieces of a resumed run).
    stopped: None when the run reached its last epoch; 'callback' when a callback asked to
      stop; the signal's name ('SIGTERM', 'SIGINT') when one arrived; 'diverged' for a
      population member dropped as diverged (`population.train_population`).
    detail: what a 'diverged' member's message said; '' otherwise.
    train_s: a population member's share of the population's training seconds; None for
      a solo run.
  """

  state: state_lib.GANState
  scores: list[dict]
  stopped: str | None
  detail: str = ""
  train_s: float | None = None


class TrainingDiverged(RuntimeError):
  """A loss became NaN or infinite."""


def check_workdir(workdir: str, config) -> None:
  """Raises ConfigError if `workdir` cannot be written or holds an incompatible run."""
  if not workdir:
    raise ConfigError("--workdir is required")
  check_writable(workdir, "--workdir")
  saved_path = os.path.join(workdir, "config.json")
  if os.path.isfile(saved_path):
    try:
      with open(saved_path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"--workdir={workdir!r}: config.json is unreadable ({e})") from None
    for field in STRUCTURAL_FIELDS:
      old, new = configlib.get(saved, field), configlib.get(config, field)
      if old != new:
        raise ConfigError(
          f"--workdir={workdir!r} holds a run with config.{field}={old!r}, but this config "
          f"has config.{field}={new!r}; use a new --workdir or the saved config"
        )


def write_config(workdir: str, config) -> None:
  """Writes config.json atomically (a process ended mid-write leaves the old file).

  In a multi-process run only process 0 writes: the processes share the workdir, and two
  writers renaming one temporary file made the second fail (a CI abort, issue 29).
  """
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.isfile(path):
    _record_config_change(workdir, path, json.loads(text))
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


CONFIG_HISTORY = "config_history.jsonl"


def _record_config_change(workdir: str, path: str, new: dict) -> None:
  """A resume with other (non-structural) values, e.g. --config.optim.g_lr: one log line
  naming what changed, and a `config_history.jsonl` line {"step", "time", "changed":
  {field: [old, new]}} (the step: the newest checkpoint, from which the new values
  apply), so that config.json, which holds the newest values, does not erase the record."""
  try:
    with open(path) as f:
      old = configlib.flatten(json.load(f))
  except (OSError, ValueError):
    return  # check_workdir has refused an unreadable one already
  new = configlib.flatten(new)
  changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))}
  changed = {k: v for k, v in changed.items() if v[0] != v[1]}
  if not changed:
    return
  step = max(checkpointing.latest_steps(workdir), default=0)
  text = "; ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changed.items())
  logging.warning(
    "%s: the config differs from the one this workdir last ran with, from step %d on: %s "
    "(recorded in %s).",
    workdir,
    step,
    text,
    CONFIG_HISTORY,
  )
  when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  with open(os.path.join(workdir, CONFIG_HISTORY), "a") as f:
    f.write(json.dumps({"step": step, "time": when, "changed": changed}) + "\n")


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps.

  Under the training CLI (`stop.install`), a signal before `arm()` (called once the first
  step has finished) ends the process at once with one line: there is nothing to save,
  and waiting would mean waiting for the compile. Elsewhere (notebooks, search workers)
  ordinary handlers set the flag from the start.
  """

  def __init__(self):
    # A signal that came before the loop (search workers). Elsewhere a signal belongs to
    # the run it stopped: a later run in the same process (a notebook) starts afresh.
    self.received = stop_lib.pending if stop_lib.recording else None
    self._old = {}
    self._delivery = None

  def __enter__(self):
    if stop_lib.installed():
      return self
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass
    return self

  def arm(self) -> None:
    """From now on a signal stops the run with a checkpoint (it has trained a step)."""
    if stop_lib.installed() and self._delivery is None:
      self._delivery = stop_lib.deliver_to(self._record)
      self._delivery.__enter__()

  def _record(self, name: str) -> None:
    self.received = name

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    if stop_lib.recording:
      stop_lib.pending = self.received

  def __exit__(self, *exc):
    if self._delivery is not None:
      self._delivery.__exit__(*exc)
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _flatten_metrics(metrics: dict[str, np.ndarray]) -> dict[str, float]:
  """Per-generator arrays become scalars named like 'g_adv/0' or 'gate_transfer/0_1'."""
  out = {}
  for name, value in metrics.items():
    value = np.asarray(value)
    if value.ndim == 0:
      out[name] = float(value)
    elif value.ndim == 1:
      out.update({f"{name}/{i}": float(v) for i, v in enumerate(value)})
    else:
      for (t, s), v in np.ndenumerate(value):
        if t != s:
          out[f"{name}/{t}_{s}"] = float(v)
  return out


def _check_finite(history: list[dict], step: int, last_good: int | None, workdir: str) -> None:
  if not history:
    return
  fetched = jax.device_get(history)
  for i, m in enumerate(fetched):
    bad = [n for n in ("d_loss", "g_loss") if not np.all(np.isfinite(m[n]))]
    if bad:
      where = (
        f"the last good checkpoint (step {last_good}) is kept in "
        f"{os.path.join(workdir, checkpointing.LATEST_DIR)}"
        if last_good is not None
        else "no checkpoint was written"
      )
      raise TrainingDiverged(
        f"non-finite {', '.join(bad)} at step {step - len(fetched) + i + 1}; stopping; {where}"
      )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, callbacks: Sequence[Callback] = ()
) -> RunResult:
  """Trains (or resumes) a run in `workdir`.

  Args:
    config: the run's config (validated here).
    workdir: checkpoints, `scores.jsonl`, samples and logs.
    callbacks: called after each evaluation with its record (see `Callback`); one that
      returns True stops the run cleanly, with a checkpoint (e.g. search pruning).

  Returns:
    A `RunResult`.

  Raises:
    ConfigError: anything the user can fix (config, data, devices, workdir); raised before
      the workdir is touched.
    TrainingDiverged: a loss became non-finite; the last good checkpoint stays.
  """
  return _SoloRun(config, workdir, callbacks).run()


class _SoloRun:
  """One run of `train_and_evaluate` as short named pieces: `resume` (the workdir and its
  latest checkpoint), `start_outputs`, the epoch loop (`train_epochs`, `train_epoch`) and
  `evaluate` (grids, scores, the scores record, the best checkpoint, the callbacks)."""

  def __init__(self, config, workdir: str, callbacks: Sequence[Callback]):
    configlib.validate_config(config)
    self.config, self.workdir, self.callbacks = config, workdir, list(callbacks)
    self.program = builder.build(config)
    check_workdir(workdir, config)
    self.images = input_pipeline.load_images(config)
    self.evaluator = evaluator_lib.make_training_evaluator(config, self.images)
    self.spe = input_pipeline.steps_per_epoch(len(self.images), config.train.batch_size)
    self.total_steps = self.spe * config.num_epochs
    init_key, self.eval_key = jax.random.split(jax.random.PRNGKey(config.seed))
    self.state = self.program.init_state(config, init_key)
    self.manager = self.best_manager = self.writer = self.report = self.stop = None
    self.last_good: int | None = None
    self.pending_eval = False
    self.history: list[dict] = []
    self.stopped: str | None = None
    self.step = self.first_step = 0

  def run(self) -> RunResult:
    finished = self.resume()
    if finished is not None:
      return finished
    self.start_outputs()
    try:
      with _StopSignal() as stop:  # also over the final checkpoint write (see `_StopSignal`)
        self.stop = stop
        try:
          self.train_epochs()
        finally:  # also on an error or interrupt: a checkpoint being written is finished
          checkpointing.close(self.manager)
          checkpointing.close(self.best_manager)
    finally:
      self.writer.close()
    records = scores_lib.read(self.workdir)
    seconds = time.perf_counter() - self.t_start
    _summary(
      self.workdir, self.first_step, self.step, self.total_steps, seconds, records, self.stopped
    )
    return RunResult(self.state, records, self.stopped)

  # -- resume -----------------------------------------------------------------------------

  def eval_due(self, at: int) -> bool:  # at the end of an epoch
    return at // self.spe % self.config.eval.every_epochs == 0 or at >= self.total_steps

  def resume(self) -> RunResult | None:
    """Opens the workdir and restores its latest checkpoint; the result at once when the run
    is already finished."""
    config, workdir = self.config, self.workdir
    os.makedirs(workdir, exist_ok=True)
    write_config(workdir, config)
    self.manager = checkpointing.make_manager(workdir, config.checkpoint.keep)
    for sub in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):  # a write cut off earlier
      checkpointing.remove_temporary(os.path.join(workdir, sub))
    restored = checkpointing.restore_latest(self.manager, self.state, workdir)
    if restored is None:
      return None
    self.state, self.last_good = restored
    records = scores_lib.read(workdir)
    # The checkpoint is saved before the epoch's evaluation, so a run stopped while
    # evaluating resumes by evaluating that step first (no training is repeated).
    self.pending_eval = (
      self.evaluator is not None
      and self.last_good % self.spe == 0
      and self.eval_due(self.last_good)
      and not any(r.get("step") == self.last_good for r in records)
    )
    if self.last_good >= self.total_steps and not self.pending_eval:
      self.manager.close()
      logging.info(
        "%s is already finished (step %d of %d); nothing to train. Raise "
        "--config.num_epochs to continue it.",
        workdir,
        self.last_good,
        self.total_steps,
      )
      return RunResult(self.state, records, None)
    logging.info("Resumed from step %d in %s", self.last_good, workdir)
    return None

  def start_outputs(self) -> None:
    """The writers, the best checkpoint's manager, the progress line and the first log."""
    config, program = self.config, self.program
    self.writer = writers.make_writer(self.workdir, just_logging=jax.process_index() > 0)
    self.writer.write_hparams(_flatten_hparams(config))
    if self.evaluator is not None:
      self.best_manager = checkpointing.make_best_manager(self.workdir, self.evaluator.selection[1])
      if self.last_good is not None:  # a resume: is the best one still readable?
        checkpointing.check_best(self.best_manager, self.state, self.workdir)
    self.hparams = program.hparams(config, self.spe)
    self.grid_z = generate.latents(
      jax.random.fold_in(self.eval_key, 0), config.eval.num_grid, config.model.z_dim
    )
    self.step = self.first_step = int(self.state.step)
    self.report = writers.make_progress(
      self.total_steps,
      config.train.log_every_steps,
      evaluation_plan(config, self.spe) if self.evaluator is not None else (),
    )
    logging.info(
      "Training %s, k=%d, %d steps/epoch, steps %d..%d on %d device(s).",
      config.method,
      config.model.k,
      self.spe,
      self.step,
      self.total_steps,
      program.mesh.devices.size,
    )
    if "step_on_raw" not in program.traces:
      logging.info(
        "Compiling the training step (once per structure; later processes read it from the "
        "compilation cache)..."
      )
    self.t_start = time.perf_counter()

  # -- the epoch loop -----------------------------------------------------------------------

  def train_epochs(self) -> None:
    signal_name = stop_protocol(self.stop, self._epochs, self._at, self._save_unsaved)
    self.stopped = signal_name or self.stopped

  def _at(self) -> str:
    return str(self.step)

  def _save_unsaved(self) -> None:
    if self.last_good != self.step:
      self.save_checkpoint()

  def _epochs(self) -> None:
    """Epochs until the last step, a signal (returns with `stop.received` set) or a
    callback's stop."""
    stop = self.stop
    if self.pending_eval:
      logging.info("Evaluating step %d, which the previous process did not finish.", self.step)
      if self.evaluate_or_stop():
        return
    while self.step < self.total_steps and self.stopped is None:
      self.train_epoch()
      if stop.received is not None:
        return
      if self.step // self.spe % self.config.checkpoint.every_epochs == 0 or (
        self.step >= self.total_steps
      ):
        self.save_checkpoint()  # before evaluating: a run killed while evaluating keeps it
      if self.eval_due(self.step):
        self.evaluate_or_stop()

  def train_epoch(self) -> None:
    """The rest of the current epoch, or until a signal."""
    config, program, stop = self.config, self.program, self.stop
    epoch, start = divmod(self.step, self.spe)
    batches = input_pipeline.EpochBatches(
      self.images,
      config.train.batch_size,
      config.seed,
      epoch,
      start,
      jax.process_index(),
      jax.process_count(),
    )
    for raw in input_pipeline.prefetch_to_device(
      batches, config.data.prefetch, program.data_sharding
    ):
      self.state, metrics = program.step_on_raw(self.state, raw, self.hparams)
      self.step += 1
      self.history.append(metrics)
      if self.step == self.first_step + 1:
        jax.block_until_ready(metrics)  # compiled and run: the progress clock starts here
        stop.arm()  # from now on a signal stops the run with a checkpoint
      if self.step % config.train.log_every_steps == 0:
        # waits for the step (device_get)
        _check_finite(self.history, self.step, self.last_good, self.workdir)
        _log(self.writer, self.history, self.step)
        self.history = []
      rate = self.report(self.step)  # after the wait above, so the rate is of finished steps
      if rate is not None:
        self.writer.write_scalars(self.step, {"steps_per_sec": rate})
      if stop.received is not None:
        return

  def save_checkpoint(self) -> None:
    _check_finite(self.history, self.step, self.last_good, self.workdir)
    _log(self.writer, self.history, self.step)
    self.history = []
    checkpointing.save(self.manager, self.step, self.state)
    self.last_good = self.step

  # -- evaluate and record ------------------------------------------------------------------

  def evaluate_or_stop(self) -> bool:
    """`evaluate`, and a callback's stop after it (with the step's checkpoint). True when it
    stops. A signal during it raises `EvaluationInterrupted` (see `stop_protocol`)."""
    if self.evaluate():
      self.stopped = "callback"
      logging.info("A callback asked to stop after step %d: saving a checkpoint.", self.step)
      self._save_unsaved()
      return True
    return False

  def evaluate(self) -> bool:
    """The sample grids and (with an evaluator) the scores of the state at this step, the
    end of an epoch; True when a callback asks the run to stop."""
    config, step, state, evaluator = self.config, self.step, self.state, self.evaluator
    last = step >= self.total_steps
    write_sample_grids(
      self.writer, self.workdir, self.program.generate, state, self.grid_z, step, config.model.k
    )
    if evaluator is None:
      return False
    num = config.eval.final_num_samples if last else config.eval.num_samples
    t_eval = time.perf_counter()
    stop = self.stop
    scores = evaluator.evaluate(
      self.program.generate,
      state,
      jax.random.fold_in(self.eval_key, 1),
      num,
      should_stop=lambda: stop.received is not None,
    )
    eval_s = time.perf_counter() - t_eval
    self.report.evaluated(eval_s, num)
    log_scores(self.writer, evaluator, scores, step, num, eval_s)
    record = evaluator.record(scores, step=step, epoch=step // self.spe, num_samples=num)
    record.update(
      final=last,
      eval_s=round(eval_s, 2),
      process_s=round(time.perf_counter() - self.t_start, 2),
    )
    if jax.process_index() == 0:
      scores_lib.append(self.workdir, record)
    save_best(self.best_manager, evaluator, scores, step, state)
    return any([bool(cb(record)) for cb in self.callbacks]) and not last


def stop_protocol(stop, train, at, save_unsaved) -> str | None:
  """What a signal does to an epoch loop, one protocol for a solo run (`_SoloRun`) and a
  population (`population._PopulationLoop`). Returns the signal's name, or None.

  Before the first step (a search worker's signal that came first; under the training CLI
  one before `arm()` has already ended the process): nothing to save, stop at once.
  Between steps: `train()` returns with `stop.received` set; the checkpoints not yet
  written (`save_unsaved()`) are written and the run stops. During an evaluation (checked
  between Inception batches): `EvaluationInterrupted`; the step's checkpoint is already
  saved (before its evaluation), the next start evaluates it first.

  Args:
    stop: the loop's `_StopSignal`.
    train: trains until the end or a signal.
    at: the step(s) for the log line.
    save_unsaved: writes the checkpoint(s) not yet written.
  """
  if stop.received is not None:
    logging.warning("Received %s before training started: stopping.", stop.received)
    return stop.received
  try:
    train()
  except evaluator_lib.EvaluationInterrupted:
    logging.warning(
      "Received %s while evaluating step %s: stopping now. Its checkpoint is saved; the next "
      "start evaluates it first.",
      stop.received,
      at(),
    )
    save_unsaved()
    return stop.received
  if stop.received is None:
    return None
  logging.warning("Received %s at step %s: saving checkpoints and exiting.", stop.received, at())
  save_unsaved()
  return stop.received


def _summary(workdir, first, step, total, seconds, records, stopped) -> None:
  """The closing lines: what ran, how long, where its outputs are."""
  status = "finished" if step >= total else f"stopped ({stopped}) at step {step} of {total}"
  lines = [
    f"Run {status}: steps {first}..{step} in {seconds / 60:.1f} min ({workdir}).",
    f"  checkpoints: {os.path.join(workdir, checkpointing.LATEST_DIR)}",
    f"  sample grids: {os.path.join(workdir, 'samples')}",
  ]
  if records:
    last = records[-1]
    fids = ", ".join(f"G{g + 1} {m['fid']:.2f}" for g, m in enumerate(last["generators"]))
    lines.append(f"  scores: {scores_lib.path(workdir)} (last, step {last['step']}: FID {fids})")
  if step < total:
    lines.append("  Run the same command again to resume.")
  logging.info("\n".join(lines))


def _log(writer, history: list[dict], step: int) -> None:
  if not history:
    return
  fetched = jax.device_get(history)
  mean = {name: np.mean([m[name] for m in fetched], axis=0) for name in fetched[0]}
  writer.write_scalars(step, _flatten_metrics(mean))


def _flatten_hparams(config) -> dict:
  return {
    name: value if isinstance(value, int | float | str | bool) else str(value)
    for name, value in configlib.flatten(config).items()
  }


def write_sample_grids(writer, workdir, generate_fn, state, z, step, k) -> None:
  """Writes one grid per generator from the fixed latents `z` (the same z for every G)."""
  images = np.asarray(generate_fn(state.g_params, state.g_batch_stats, z))  # [k, n, h, w, 3]
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  grids = {}
  for i in range(k):
    grid = generate.make_grid(images[i])
    generate.save_png(grid, os.path.join(out_dir, f"step_{step:08d}_g{i}.png"))
    grids[f"samples/g{i}"] = grid[None]
  writer.write_images(step, grids)


def evaluation_plan(config, spe: int) -> list[tuple[int, int]]:
  """(step, samples per generator) of every evaluation of a run, for the ETA."""
  total = spe * config.num_epochs
  every = config.eval.every_epochs
  return [
    (e * spe, config.eval.final_num_samples if e * spe >= total else config.eval.num_samples)
    for e in range(1, config.num_epochs + 1)
    if e % every == 0 or e == config.num_epochs
  ]


def log_scores(writer, evaluator, scores, step: int, num_samples: int, eval_s=None) -> None:
  """Writes <metric>/g<i> for every metric of every generator (and `eval_s`, the
  evaluation's seconds) and logs the table."""
  out = {f"{name}/g{g}": value for g, sc in enumerate(scores) for name, value in sc.items()}
  if eval_s is not None:
    out["eval_s"] = float(eval_s)
  writer.write_scalars(step, out)
  logging.info("%s", evaluator_lib.format_table(scores, evaluator.header(num_samples, step)))


def save_best(best_manager, evaluator, scores, step: int, state) -> None:
  """Keeps the checkpoint with the best value of config.eval.select over the generators."""
  metric, _ = evaluator.selection
  values = [sc[metric] for sc in scores]
  if not np.all(np.isfinite(values)):
    logging.warning("Not considered for the best checkpoint: non-finite %s %s.", metric, values)
    return
  value = evaluator.select_value(scores)
  checkpointing.save(best_manager, step, state, metrics={"selection": float(value)})
