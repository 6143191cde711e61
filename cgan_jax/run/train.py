"""Set-up and training loop: data, state, steps, sample grids, checkpoints, logging.

`train_and_evaluate(config, workdir)` validates everything a user can get wrong (config,
data, devices, workdir) before it writes a byte, then trains for `config.num_epochs`,
resuming from the newest readable checkpoint in the workdir.
"""

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from cgan_jax import configlib
from cgan_jax.core import gates as gates_lib
from cgan_jax.core import graph as graph_lib
from cgan_jax.core import state as state_lib
from cgan_jax.core import steps
from cgan_jax.errors import ConfigError
from cgan_jax.quality import evaluator as evaluator_lib
from cgan_jax.run import checkpointing, generate, input_pipeline, parallel, writers
from cgan_jax.run import scores as scores_lib

# Fields that fix the shapes of the state or the meaning of a step: a workdir trained with
# one value cannot be resumed with another.
STRUCTURAL_FIELDS = (
  "method",
  "model.k",
  "model.z_dim",
  "model.g_width",
  "model.d_width",
  "model.ema_decay",
  "data.image_size",
  "data.num_train",
  "graph.transfer",
  "train.batch_size",
  "train.d_update",
)


class Training(NamedTuple):
  """Everything a step needs, built from a config by `make_training`.

  Attributes:
    generator, discriminator: the modules.
    tx_g, tx_d: the optimizers.
    state: the initial `GANState` (host-local, not yet placed on a mesh).
    train_step: pure train_step(state, real [b, s, s, 3] in [-1, 1], graph) ->
      (state, metrics), not yet jitted (see `steps.make_train_step`).
    graph: the config's `GraphArrays` (gate choices and alpha as arrays).
  """

  generator: Any
  discriminator: Any
  tx_g: Any
  tx_d: Any
  state: state_lib.GANState
  train_step: Callable
  graph: graph_lib.GraphArrays


def make_training(config, *, steps_per_epoch: int, init_key: jax.Array) -> Training:
  """Models, optimizers, initial state, step and graph of a validated config.

  The one place they are put together: the training loop, the tests and the benchmarks
  all call this, so they time and test exactly what `train_and_evaluate` runs.

  Args:
    config: a validated config.
    steps_per_epoch: sets the gates' progress (progress is per epoch by default).
    init_key: key for the parameters and the loop key.
  """
  generator, discriminator = state_lib.make_models(config)
  tx_g, tx_d = state_lib.make_optimizers(config)
  state = state_lib.create_train_state(
    init_key, config=config, generator=generator, discriminator=discriminator, tx_g=tx_g, tx_d=tx_d
  )
  progress_fn = gates_lib.make_progress_fn(
    num_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch, mode=config.graph.progress
  )
  train_step = steps.make_train_step(
    generator=generator,
    discriminator=discriminator,
    tx_g=tx_g,
    tx_d=tx_d,
    config=config,
    progress_fn=progress_fn,
  )
  graph = graph_lib.graph_arrays_from_config(config)
  return Training(generator, discriminator, tx_g, tx_d, state, train_step, graph)


class TrainingDiverged(RuntimeError):
  """A loss became NaN or infinite."""


def _get(config_dict, dotted: str):
  node = config_dict
  for part in dotted.split("."):
    if not isinstance(node, dict | ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def check_workdir(workdir: str, config) -> None:
  """Raises ConfigError if `workdir` cannot be written or holds an incompatible run."""
  if not workdir:
    raise ConfigError("--workdir is required")
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise ConfigError(f"--workdir={workdir!r} exists and is not a directory")
    if not os.access(workdir, os.W_OK | os.X_OK):
      raise ConfigError(f"--workdir={workdir!r} is not writable")
  else:
    parent = os.path.dirname(os.path.abspath(workdir))
    while not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
      raise ConfigError(
        f"--workdir={workdir!r} cannot be created: {parent!r} is not a writable directory"
      )
  saved_path = os.path.join(workdir, "config.json")
  if os.path.isfile(saved_path):
    try:
      with open(saved_path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"--workdir={workdir!r}: config.json is unreadable ({e})") from None
    for field in STRUCTURAL_FIELDS:
      old, new = _get(saved, field), _get(config, field)
      if old != new:
        raise ConfigError(
          f"--workdir={workdir!r} holds a run with config.{field}={old!r}, but this config "
          f"has config.{field}={new!r}; use a new --workdir or the saved config"
        )


def write_config(workdir: str, config) -> None:
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.received = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains (or resumes) a run in `workdir`; returns the final `GANState`.

  Raises:
    ConfigError: anything the user can fix (config, data, devices, workdir); raised before
      the workdir is touched.
    TrainingDiverged: a loss became non-finite; the last good checkpoint stays.
  """
  configlib.validate_config(config)
  mesh = parallel.make_mesh(gen=configlib.gen_devices(config))
  parallel.check_mesh(config, mesh)
  check_workdir(workdir, config)
  images = input_pipeline.load_images(config)

  os.makedirs(workdir, exist_ok=True)
  write_config(workdir, config)
  writer = writers.make_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(_flatten_hparams(config))

  spe = input_pipeline.steps_per_epoch(len(images), config.train.batch_size)
  total_steps = spe * config.num_epochs
  root = jax.random.PRNGKey(config.seed)
  init_key, eval_key = jax.random.split(root)
  replicated = parallel.replicated(mesh)
  training = make_training(config, steps_per_epoch=spe, init_key=init_key)
  generator, step_fn = training.generator, training.train_step
  shardings = parallel.state_sharding(training.state, mesh)
  state = jax.device_put(training.state, shardings)

  evaluator = evaluator_lib.make_training_evaluator(config, images)
  best_manager = None
  if evaluator is not None:
    best_manager = checkpointing.make_best_manager(workdir, evaluator.selection[1])
  manager = checkpointing.make_manager(workdir, config.checkpoint.keep)
  restored = checkpointing.restore_latest(manager, state, workdir)
  last_good = None
  if restored is not None:
    state, last_good = restored
    logging.info("Resumed from step %d in %s", last_good, workdir)

  image_size = config.data.image_size

  def step_on_raw(state, raw, graph):
    return step_fn(state, input_pipeline.preprocess(raw, image_size), graph)

  train_step = parallel.shard_step(step_on_raw, shardings)
  graph = jax.device_put(training.graph, replicated)
  generate_fn = generate.make_generate_fn(generator)
  grid_z = generate.latents(
    jax.random.fold_in(eval_key, 0), config.eval.num_grid, config.model.z_dim
  )

  report = writers.make_progress(total_steps, writer, config.train.log_every_steps)
  step = int(state.step)
  logging.info(
    "Training %s, k=%d, %d steps/epoch, steps %d..%d on %d device(s).",
    config.method,
    config.model.k,
    spe,
    step,
    total_steps,
    mesh.devices.size,
  )
  history: list[dict] = []
  data_sharding = parallel.data_sharding(mesh)
  t_start = time.perf_counter()

  def save_checkpoint():
    nonlocal last_good, history
    _check_finite(history, step, last_good, workdir)
    _log(writer, history, step)
    history = []
    checkpointing.save(manager, step, state)
    last_good = step

  with _StopSignal() as stop:
    while step < total_steps and stop.received is None:
      epoch, start = divmod(step, spe)
      batches = input_pipeline.EpochBatches(
        images,
        config.train.batch_size,
        config.seed,
        epoch,
        start,
        jax.process_index(),
        jax.process_count(),
      )
      for raw in input_pipeline.prefetch_to_device(batches, config.data.prefetch, data_sharding):
        state, metrics = train_step(state, raw, graph)
        step += 1
        history.append(metrics)
        report(step)
        if step % config.train.log_every_steps == 0:
          _check_finite(history, step, last_good, workdir)
          _log(writer, history, step)
          history = []
        if stop.received is not None:
          break
      if stop.received is not None:
        logging.warning(
          "Received %s at step %d: saving a checkpoint and exiting.", stop.received, step
        )
        save_checkpoint()
        break
      epoch_done = step // spe
      last = step >= total_steps
      if epoch_done % config.eval.every_epochs == 0 or last:
        write_sample_grids(writer, workdir, generate_fn, state, grid_z, step, config.model.k)
        if evaluator is not None:
          num = config.eval.final_num_samples if last else config.eval.num_samples
          t_eval = time.perf_counter()
          scores = evaluator.evaluate(generate_fn, state, jax.random.fold_in(eval_key, 1), num)
          log_scores(writer, evaluator, scores, step, num)
          if jax.process_index() == 0:
            record = evaluator.record(scores, step=step, epoch=epoch_done, num_samples=num)
            record.update(
              final=last,
              eval_s=round(time.perf_counter() - t_eval, 2),
              process_s=round(time.perf_counter() - t_start, 2),
            )
            scores_lib.append(workdir, record)
          save_best(best_manager, evaluator, scores, step, state)
      if epoch_done % config.checkpoint.every_epochs == 0 or last:
        save_checkpoint()
  manager.wait_until_finished()
  manager.close()
  if best_manager is not None:
    best_manager.wait_until_finished()
    best_manager.close()
  writer.flush()
  return state


def _log(writer, history: list[dict], step: int) -> None:
  if not history:
    return
  fetched = jax.device_get(history)
  mean = {name: np.mean([m[name] for m in fetched], axis=0) for name in fetched[0]}
  writer.write_scalars(step, _flatten_metrics(mean))


def _flatten_hparams(config) -> dict:
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, ml_collections.ConfigDict):
        walk(name + ".", value)
      else:
        out[name] = value if isinstance(value, int | float | str | bool) else str(value)

  walk("", config)
  return out


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


def log_scores(writer, evaluator, scores, step: int, num_samples: int) -> None:
  """Writes is/g<i>, is_std/g<i>, fid/g<i> and logs the table with its provenance."""
  out = {}
  for g, sc in enumerate(scores):
    out[f"fid/g{g}"] = sc.fid
    if not np.isnan(sc.is_mean):
      out[f"is/g{g}"] = sc.is_mean
      out[f"is_std/g{g}"] = sc.is_std
  writer.write_scalars(step, out)
  logging.info("%s", evaluator_lib.format_table(scores, evaluator.header(num_samples, step)))


def save_best(best_manager, evaluator, scores, step: int, state) -> None:
  """Keeps the checkpoint with the best IS of any generator (else the best FID)."""
  metric, mode = evaluator.selection
  values = [sc.is_mean if metric == "is" else sc.fid for sc in scores]
  if not np.all(np.isfinite(values)):
    logging.warning("Not considered for the best checkpoint: non-finite %s %s.", metric, values)
    return
  value = max(values) if mode == "max" else min(values)
  checkpointing.save(best_manager, step, state, metrics={"selection": float(value)})
