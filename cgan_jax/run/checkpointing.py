"""Orbax checkpoints: keep the last N, a best-by-metric copy, and a safe restore.

Layout under the workdir:
  checkpoints/<step>/   the last `config.checkpoint.keep` checkpoints
  best/<step>/          the single best checkpoint by the selection metric (once metrics
                        exist): IS (higher is better), else FID (lower is better)
  corrupt/<step>/       checkpoints that failed to restore, moved aside (never deleted)
"""

import contextlib
import gc
import json
import logging as std_logging
import os
import shutil
import sys

import orbax.checkpoint as ocp
from absl import logging

from cgan_jax.errors import ConfigError

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
CORRUPT_DIR = "corrupt"


class CheckpointError(ConfigError):
  """Existing checkpoints could not be restored; the run refuses to start afresh."""


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The keep-last-N manager of `workdir/checkpoints`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, LATEST_DIR)), options=options)


def make_best_manager(workdir: str, mode: str) -> ocp.CheckpointManager:
  """Keeps the single best checkpoint by metrics['selection'] (mode 'max' or 'min').

  A best checkpoint whose metrics cannot be read (orbax would fail to open the folder) is
  moved aside first (`_move_best_aside`, one warning)."""
  for step in _steps_in(os.path.join(workdir, BEST_DIR)):
    path = os.path.join(workdir, BEST_DIR, str(step), "metrics", "metrics")
    try:
      with open(path) as f:
        json.load(f)
    except FileNotFoundError:
      continue  # saved without metrics: orbax's own rules apply
    except (OSError, ValueError) as e:
      _move_best_aside(workdir, step, f"its metrics: {_first_line(e)}")
  options = ocp.CheckpointManagerOptions(
    max_to_keep=1,
    create=True,
    best_fn=lambda metrics: float(metrics["selection"]),
    best_mode=mode,
    keep_checkpoints_without_metrics=False,
  )
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, BEST_DIR)), options=options)


class CheckpointWriteError(ConfigError):
  """A checkpoint could not be written (a full disk, a quota): one line for the user."""


def save(manager: ocp.CheckpointManager, step: int, state, metrics=None) -> None:
  """Saves `state` at `step` and waits until it is on disk.

  A step that is already there is kept as it is: a resumed run that redoes steps after a
  lost checkpoint reaches the same state (training is deterministic), e.g. a best/
  checkpoint taken before the loss. Waiting makes a failed write an error here, before the
  run evaluates the step or records its scores (a full disk used to end in hundreds of
  lines of orbax tracebacks, after a scores line for a checkpoint that was never written).

  Raises:
    CheckpointWriteError: the write failed; its temporary folder is removed, and the
      message names the step, the last good checkpoint and the space it needs.
  """
  if step in manager.all_steps():
    return
  try:
    manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001 - orbax wraps OSError in several error types
    directory = str(manager.directory)
    remove_temporary(directory)
    good = sorted(s for s in _steps_in(directory) if s != step)
    need = _nbytes(state)
    try:
      free = shutil.disk_usage(directory).free
    except OSError:
      free = -1
    last = f"step {good[-1]} in {directory}" if good else "none"
    raise CheckpointWriteError(
      f"the checkpoint of step {step} could not be written to {directory} ({_first_line(e)});"
      f" the last good checkpoint is {last}; it needs about {need / 2**20:.0f} MiB and "
      f"{max(free, 0) / 2**20:.0f} MiB are free: free some space and run the same command "
      "again to resume"
    ) from None


def close(manager: ocp.CheckpointManager | None) -> None:
  """Waits for a write in flight and closes the manager; an error there (a write that
  already failed and was reported) is one warning line, not a second traceback."""
  if manager is None:
    return
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    logging.warning("Checkpoint manager of %s: %s", manager.directory, _first_line(e))
  try:
    manager.close()
  except Exception as e:  # noqa: BLE001
    logging.warning("Checkpoint manager of %s: %s", manager.directory, _first_line(e))


def _nbytes(tree) -> int:
  import jax

  return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def remove_temporary(directory: str) -> list[str]:
  """Removes orbax's unfinished `<step>.orbax-checkpoint-tmp*` folders in `directory`."""
  removed = []
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed.append(name)
  return removed


def _from_orbax(exc: BaseException | None, tb) -> bool:
  """Whether an exception comes from orbax's (or TensorStore's) async restore machinery."""
  if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
    return True
  while tb is not None:
    name = tb.tb_frame.f_code.co_filename
    if f"{os.sep}orbax{os.sep}" in name or "tensorstore" in name:
      return True
    tb = tb.tb_next
  return False


def _closed_loop_noise(exc: BaseException | None, tb) -> bool:
  """RuntimeError('Event loop is closed') raised inside asyncio: a read that TensorStore
  finished after orbax had given up on a failed restore and closed its event loop."""
  if not (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)):
    return False
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and f"asyncio{os.sep}base_events.py" in tb.tb_frame.f_code.co_filename


_FILTER_INSTALLED = False


def _drop_closed_loop_noise() -> None:
  """Installs (once) a filter in sys.unraisablehook (and sys.excepthook and
  threading.excepthook) that drops `_closed_loop_noise`: TensorStore's reader threads
  report it as unraisable, a few at a time and after the failed restore has returned, as
  bare tracebacks. Anything else is passed on unchanged."""
  global _FILTER_INSTALLED
  if _FILTER_INSTALLED:
    return
  _FILTER_INSTALLED = True
  import threading

  old_excepthook, old_thread_hook = sys.excepthook, threading.excepthook
  old_unraisable = sys.unraisablehook

  def excepthook(exc_type, exc, tb):
    if not _closed_loop_noise(exc, tb):
      old_excepthook(exc_type, exc, tb)

  def thread_hook(args):
    if not _closed_loop_noise(args.exc_value, args.exc_traceback):
      old_thread_hook(args)

  def unraisable_hook(unraisable):  # how TensorStore's callbacks report it (no object)
    if not _closed_loop_noise(unraisable.exc_value, unraisable.exc_traceback):
      old_unraisable(unraisable)

  sys.excepthook, threading.excepthook = excepthook, thread_hook
  sys.unraisablehook = unraisable_hook


@contextlib.contextmanager
def _quiet_failed_restores():
  """A restore that fails leaves orbax's other reads (coroutines, asyncio tasks) to fail
  on their own, and Python prints each as 'Exception ignored in <coroutine ...>' with a
  traceback (dozens of them, 'Event loop is closed' among them) long after the failure
  was handled. Inside this block those leftovers are collected and dropped; the failure
  itself is still raised to the caller, and anything not from orbax is still printed."""
  _drop_closed_loop_noise()  # first: the block's hook then passes on to the filtered one
  old_hook = sys.unraisablehook
  asyncio_log = std_logging.getLogger("asyncio")
  old_level = asyncio_log.level

  def hook(unraisable):
    if not _from_orbax(unraisable.exc_value, unraisable.exc_traceback):
      old_hook(unraisable)

  sys.unraisablehook = hook
  asyncio_log.setLevel(std_logging.CRITICAL)
  try:
    yield
  finally:
    gc.collect()  # the abandoned reads are dropped here, while the hook is in place
    sys.unraisablehook = old_hook
    asyncio_log.setLevel(old_level)


def restore_latest(manager: ocp.CheckpointManager, target, workdir: str):
  """Restores the newest readable checkpoint, or returns None if there is none.

  A checkpoint that fails to restore is moved to `workdir/corrupt/` with a warning and
  the next older one is tried. If checkpoints exist but none can be read, raises
  `CheckpointError` rather than silently starting afresh over existing work.

  Args:
    manager: from `make_manager`.
    target: a state with the right structure, shapes, dtypes and shardings.
    workdir: the run's workdir.

  Returns:
    (state, step) or None.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for i, step in enumerate(steps):
    try:
      with _quiet_failed_restores():
        state = manager.restore(step, args=ocp.args.StandardRestore(target))
      return state, step
    except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
      reason = _first_line(e)
      failures.append((step, reason))
      moved = _move_aside(manager, workdir, step)
      then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older one"
      logging.warning(
        "Checkpoint at step %d could not be restored (%s); moved it to %s; %s.",
        step,
        reason,
        moved,
        then,
      )
  corrupt = os.path.join(workdir, CORRUPT_DIR)
  if not failures and os.path.isdir(corrupt) and os.listdir(corrupt):
    # An earlier start found only unreadable checkpoints and moved them aside: keep
    # refusing until the user removes them (or picks another workdir).
    raise CheckpointError(
      f"{os.path.join(workdir, LATEST_DIR)} has no checkpoint, but {corrupt} holds "
      f"unreadable ones ({', '.join(sorted(os.listdir(corrupt)))}) from an earlier start; "
      f"refusing to start afresh over existing work: to train from step 0 in this workdir, "
      f"delete or rename {corrupt}; or use a new --workdir"
    )
  if failures:
    step, reason = failures[0]
    raise CheckpointError(
      f"no readable checkpoint in {os.path.join(workdir, LATEST_DIR)} (step {step}: "
      f"{reason}); broken ones were moved to {os.path.join(workdir, CORRUPT_DIR)}; refusing "
      "to start afresh over existing work: use a new --workdir or remove the workdir"
    )
  return None


def check_best(manager: ocp.CheckpointManager, target, workdir: str) -> None:
  """At a resume: the best checkpoint (`best/`) must be readable, or `sample`/`evaluate
  --checkpoint=best` would find out only after training. An unreadable one is moved aside
  (`_move_best_aside`, one warning); the next evaluation then starts a new best."""
  steps = sorted(manager.all_steps())
  if not steps:
    return
  try:
    with _quiet_failed_restores():
      manager.restore(steps[-1], args=ocp.args.StandardRestore(target))
  except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
    _move_best_aside(workdir, steps[-1], _first_line(e))
    manager.reload()


def _move_best_aside(workdir: str, step: int, reason: str) -> None:
  """Moves best/<step> to corrupt/best_<step> (a free name), with one warning."""
  dst = _move_to_corrupt(os.path.join(workdir, BEST_DIR, str(step)), workdir, f"best_{step}")
  logging.warning(
    "The best checkpoint (step %d) cannot be read (%s); moved it to %s; the next "
    "evaluation starts a new best.",
    step,
    reason,
    dst,
  )


def restore_at(manager: ocp.CheckpointManager, step: int, target):
  """The checkpoint at `step` (which must exist), restored into `target`'s structure."""
  return manager.restore(step, args=ocp.args.StandardRestore(target))


def _move_aside(manager: ocp.CheckpointManager, workdir: str, step: int) -> str:
  dst = _move_to_corrupt(os.path.join(str(manager.directory), str(step)), workdir, str(step))
  manager.reload()
  return dst


def _move_to_corrupt(src: str, workdir: str, name: str) -> str:
  """Moves `src` to workdir/corrupt/<name> (or <name>.1, .2, ... when taken)."""
  dst_root = os.path.join(workdir, CORRUPT_DIR)
  os.makedirs(dst_root, exist_ok=True)
  dst = os.path.join(dst_root, name)
  n = 1
  while os.path.exists(dst):
    dst = os.path.join(dst_root, f"{name}.{n}")
    n += 1
  shutil.move(src, dst)
  return dst


def _first_line(e: BaseException) -> str:
  """The first line of an error, without TensorStore's repr of its spec (a few hundred
  characters of a bound method's address)."""
  line = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return line.split(" See full TensorStore details")[0][:300]


def restore_step(workdir: str, which: str, target):
  """Restores `which` = 'latest' | 'best' | a step number; for the CLIs (read-only).

  'latest' (and 'best') skip a checkpoint that cannot be read, with one warning line,
  and use the next older one. 'best' when the run has no best/ checkpoint (trained
  without IS/FID) uses the latest, with a warning that says so.

  Returns:
    (state, step).

  Raises:
    ConfigError: no such checkpoint, or none that can be read (one line).
  """
  latest_dir = os.path.join(workdir, LATEST_DIR)
  directory = latest_dir
  if which == "best":
    best_dir = os.path.join(workdir, BEST_DIR)
    if _steps_in(best_dir):
      directory = best_dir
    else:
      logging.warning(
        "--checkpoint=best: %s has no checkpoint (the run was trained without IS/FID: "
        "config.eval.enabled=False or no Inception weights); using the latest checkpoint.",
        best_dir,
      )
      which = "latest"
  steps = _steps_in(directory)
  if not steps:
    corrupt = os.path.join(workdir, CORRUPT_DIR)
    moved = sorted(os.listdir(corrupt)) if os.path.isdir(corrupt) else []
    hint = f"; training moved unreadable ones ({', '.join(moved)}) to {corrupt}" if moved else ""
    raise ConfigError(f"--checkpoint={which}: no checkpoints in {directory}{hint}")
  if which in ("latest", "best"):
    candidates = sorted(steps, reverse=True)
  else:
    try:
      step = int(which)
    except ValueError:
      raise ConfigError(
        f"--checkpoint={which!r} must be 'latest', 'best' or a step number"
      ) from None
    if step not in steps:
      raise ConfigError(f"--checkpoint={step}: no such step; available: {sorted(steps)}")
    candidates = [step]
  manager = ocp.CheckpointManager(
    os.path.abspath(directory), options=ocp.CheckpointManagerOptions(create=False)
  )
  failures = []
  try:
    for step in candidates:
      try:
        with _quiet_failed_restores():
          state = manager.restore(step, args=ocp.args.StandardRestore(target))
      except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
        failures.append(f"step {step}: {_first_line(e)}")
        if len(candidates) > 1:
          logging.warning(
            "Checkpoint at step %d cannot be read (%s); trying an older one.", step, _first_line(e)
          )
        continue
      if failures:
        logging.warning("Using the checkpoint at step %d.", step)
      return state, step
  finally:
    manager.close()
  raise ConfigError(
    f"--checkpoint={which}: no readable checkpoint in {directory} ({'; '.join(failures)})"
  )


def latest_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints in `workdir`'s checkpoints/ ([] if none); unlike
  a manager's `all_steps()` it creates nothing."""
  return sorted(_steps_in(os.path.join(workdir, LATEST_DIR)))


def best_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints in `workdir`'s best/ ([] if none)."""
  return sorted(_steps_in(os.path.join(workdir, BEST_DIR)))


def _steps_in(directory: str) -> list[int]:
  """The step numbers of the finished checkpoints in `directory` ([] if none)."""
  if not os.path.isdir(directory):
    return []
  return [int(n) for n in os.listdir(directory) if n.isdigit()]
