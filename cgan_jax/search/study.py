"""The Optuna study of a knowledge-transfer-graph search: storage, workers, trials.

Storage:
  default   Optuna's journal file `DIR/journal.log` (one machine, any number of worker
            processes; `optuna-dashboard DIR/journal.log` reads it). SQLite is not used:
            it locks up with several writers.
  URL       any RDB URL (`postgresql://user@host/db`): every host runs the same command and
            they share one study.

A trial that stops without finishing (its worker was killed, the machine went down) must
not stay RUNNING forever. Each running trial proves it is alive every
`config.search.heartbeat_s` seconds: through Optuna's heartbeat on an RDB, through the
mtime of `DIR/heartbeats/<trial>` on the journal store (JournalStorage has no heartbeat).
A trial whose worker process on this host is alive is never failed, however late its
heartbeat (a saturated CPU, a long compile); one whose process is gone, or (on another
host) silent for `grace_s`, is failed by the next worker that looks (every worker looks
before each trial and at start) and re-queued with the same graph and the same workdir, so
it resumes from its last checkpoint, at most `max_retry` times. Finished trials are
COMPLETE or PRUNED; failed ones do not count, so the study ends with exactly `num_trials`
finished trials and none lost or repeated. A trial that two workers started one too many
at the same moment fails at once, before training, marked 'surplus' (`is_surplus`).

Within a worker, trials of the same structure (only gates differ) reuse one compiled step
(`run.builder`); new processes load it from the persistent compilation cache.
"""

import contextlib
import json
import logging as pylogging
import os
import shutil
import socket
import threading
import time
from datetime import datetime

import numpy as np
import optuna
from absl import logging
from optuna.trial import TrialState

from cgan_jax.errors import ConfigError
from cgan_jax.run import stop as stop_lib
from cgan_jax.run import train
from cgan_jax.search import space

JOURNAL = "journal.log"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RDB_SCHEMES = ("postgresql", "mysql", "sqlite")


SURPLUS = "surplus"  # the user attr of a trial dropped as surplus (see `is_surplus`)
INTERRUPTED = "interrupted"  # a signal stopped the worker mid-trial (`SearchInterrupted`)


class SearchInterrupted(Exception):
  """A signal stopped the worker mid-trial; the trial was checkpointed and re-queued."""


class SurplusTrial(Exception):
  """The trial was started after the study's last ones (see `is_surplus`): failed before
  training, and not counted."""

  def __init__(self, number: int):
    super().__init__(number)  # args = (number,): survives pickling
    self.number = number

  def __str__(self) -> str:
    return f"trial {self.number}"


class _HideSurplusFailures(pylogging.Filter):
  """Drops Optuna's two 'Trial N failed' warnings for a surplus trial: the first carries
  the `SurplusTrial` itself (as exc_info), the second ('... failed with value None.')
  follows it at once from the same thread. The objective says what happened in one line
  instead. Matching the exception, not the trial number, keeps another study's 'Trial N
  failed' in the same process visible."""

  def __init__(self):
    super().__init__()
    self._pending = threading.local()  # the number whose second warning is still due

  def filter(self, record: pylogging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, SurplusTrial | SearchInterrupted):
      # A SearchInterrupted's trial number is in its text ('SIGTERM during trial N').
      number = exc.number if isinstance(exc, SurplusTrial) else record.getMessage().split()[1]
      self._pending.number = number
      return False
    number = getattr(self._pending, "number", None)
    if number is not None and record.getMessage().startswith(f"Trial {number} failed with value"):
      self._pending.number = None
      return False
    return True


pylogging.getLogger("optuna.study._optimize").addFilter(_HideSurplusFailures())


def is_rdb(url: str) -> bool:
  return bool(url) and url.split(":", 1)[0].split("+", 1)[0] in RDB_SCHEMES


def open_storage(study_dir: str, url: str, search) -> optuna.storages.BaseStorage:
  """The journal file in `study_dir` (url '') or an RDB at `url` with the heartbeat on."""
  if not url:
    from optuna.storages.journal import JournalFileBackend

    os.makedirs(study_dir, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(os.path.join(study_dir, JOURNAL)))
  if not is_rdb(url):
    raise ConfigError(
      f"--storage={url!r} is not an RDB URL; use e.g. postgresql://user:pass@host/db, or leave "
      f"it empty for the journal file in --study_dir"
    )
  try:
    return optuna.storages.RDBStorage(
      url,
      heartbeat_interval=search.heartbeat_s,
      grace_period=search.grace_s,
      heartbeat_stale_trial_callback=_RetryInSameWorkdir(search.max_retry),
    )
  except Exception as e:  # noqa: BLE001 - driver errors vary; one line for the user
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"--storage={url!r}: cannot open the database: {first}") from None


class _RetryInSameWorkdir:
  """Optuna's stale-trial callback for RDBs: re-queue with the same params and user attrs
  (the workdir among them), counting retries in the user attrs as the journal path does."""

  def __init__(self, max_retry: int):
    self.max_retry = max_retry

  def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    requeue(study, trial, self.max_retry)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retry: int) -> bool:
  """Enqueues a failed trial's graph again (same workdir) unless it was retried enough."""
  retries = int(trial.user_attrs.get("retries", 0))
  if retries >= max_retry:
    logging.warning("Trial %d failed %d times; not retried again.", trial.number, retries + 1)
    return False
  attrs = {
    **trial.user_attrs,
    "retries": retries + 1,
    "retry_of": trial.user_attrs.get("retry_of", trial.number),
  }
  study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
  logging.info(
    "Trial %d did not finish; its graph is queued again (retry %d).", trial.number, retries + 1
  )
  return True


def heartbeat_path(study_dir: str, number: int) -> str:
  return os.path.join(study_dir, "heartbeats", str(number))


class Heartbeat:
  """Touches `heartbeats/<number>` every `interval` seconds from a thread, from the moment
  the objective starts a trial until the worker has told Optuna its end (`stop`).

  It beat only around training before, and stopped (removing its file) before Optuna's
  final tell: in that window another worker saw a RUNNING trial without a file, took its
  start time as its last sign of life, failed it as stale, and the finishing worker then
  crashed in Optuna's tell (issue 29). The thread does little but sleep and write a few
  bytes: it holds the GIL for microseconds a beat.
  """

  def __init__(self, study_dir: str, interval: float):
    self.study_dir, self.interval = study_dir, interval
    self._stop = threading.Event()
    self._thread = None
    self.paths: list[str] = []

  def start(self, numbers: int | list[int]) -> None:
    """Beats for trial `numbers` (one, or a population's several)."""
    self.stop()
    numbers = [numbers] if isinstance(numbers, int) else list(numbers)
    self.paths = [heartbeat_path(self.study_dir, n) for n in numbers]
    os.makedirs(os.path.join(self.study_dir, "heartbeats"), exist_ok=True)
    self._stop = threading.Event()
    self._beat()  # at once, before the thread is scheduled
    self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")
    self._thread.start()

  def set(self, numbers: list[int]) -> None:
    """Beats for `numbers` from now on (a population's slot refilled): the files of trials
    no longer held are removed, the others never go missing."""
    if self._thread is None:
      self.start(numbers)
      return
    paths = [heartbeat_path(self.study_dir, n) for n in numbers]
    gone = [p for p in self.paths if p not in paths]
    self.paths = paths
    self._beat()
    for path in gone:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)

  def _beat(self) -> None:
    for path in list(self.paths):
      with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(str(time.time()))

  def _run(self) -> None:
    while not self._stop.wait(self.interval):
      self._beat()

  def stop(self) -> None:
    """Stops beating and removes the file (the trial is told, or was never started)."""
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
    for path in self.paths:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    self.paths = []


def _proc_stat(pid: int) -> list[str] | None:
  """The fields of /proc/<pid>/stat after the command name (field 3 on), or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None


def process_start_time(pid: int) -> str | None:
  """The start time of process `pid` (Linux: /proc/<pid>/stat field 22, in clock ticks),
  which tells a live worker from a new process that got a dead worker's pid; None where
  there is no /proc."""
  fields = _proc_stat(pid)
  return fields[19] if fields and len(fields) > 19 else None


def worker_attrs() -> dict:
  """What marks a trial as run by this process: host, pid and the pid's start time."""
  attrs = {"host": socket.gethostname(), "pid": os.getpid()}
  started = process_start_time(os.getpid())
  if started is not None:
    attrs["pid_start"] = started
  return attrs


def worker_liveness(trial: optuna.trial.FrozenTrial) -> str:
  """'alive' or 'gone' when the trial's worker ran on this host (its pid, and the pid's
  start time where known, tell), 'unknown' when it ran elsewhere (its heartbeat tells)."""
  attrs = trial.user_attrs
  if attrs.get("host") != socket.gethostname() or "pid" not in attrs:
    return "unknown"
  pid = int(attrs["pid"])
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return "gone"
  except PermissionError:
    return "alive"
  fields = _proc_stat(pid)
  if fields and fields[0] in ("Z", "X"):
    return "gone"  # a zombie: killed, not yet reaped by its parent (search --workers=N)
  if "pid_start" in attrs and process_start_time(pid) not in (None, attrs["pid_start"]):
    return "gone"  # the pid now belongs to another process
  return "alive"


def fail_stale_trials(study: optuna.Study, study_dir: str, search, journal: bool) -> None:
  """Fails (and re-queues) the running trials nobody runs any more."""
  if not journal:
    optuna.storages.fail_stale_trials(study)  # the RDB heartbeat; re-queues via the callback
    return
  now = time.time()
  for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    path = heartbeat_path(study_dir, trial.number)
    try:
      last = os.path.getmtime(path)
    except FileNotFoundError:
      last = trial.datetime_start.timestamp() if trial.datetime_start else now
    liveness = worker_liveness(trial)
    # A worker on this host whose process is alive is alive, however late its heartbeat
    # (a saturated CPU, a long compile); one whose process is gone is dead at once.
    if liveness == "alive" or (liveness == "unknown" and now - last <= search.grace_s):
      continue
    try:
      study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except Exception:  # noqa: BLE001 - another worker failed it first
      continue
    logging.warning(
      "Trial %d was RUNNING but its worker is gone (%s): failed.",
      trial.number,
      "its process on this host has ended"
      if liveness == "gone"
      else f"no heartbeat for {now - last:.0f} s",
    )
    requeue(study, study.trials[trial.number], search.max_retry)


def _taken_over(study: optuna.Study, trial_id: int) -> bool:
  """Whether the storage holds the trial as failed: when its own objective did not fail it
  (see `run_worker`), another worker did."""
  trial = study._storage.get_trial(trial_id)
  return trial.state == TrialState.FAIL


def counts(study: optuna.Study) -> dict[str, int]:
  """Trials per state; failed trials dropped as surplus count as 'surplus', not 'fail'."""
  out = {s.name.lower(): 0 for s in TrialState}
  out[SURPLUS] = 0
  for t in study.get_trials(deepcopy=False):
    surplus = t.state == TrialState.FAIL and SURPLUS in t.user_attrs
    out[SURPLUS if surplus else t.state.name.lower()] += 1
  out["finished"] = out["complete"] + out["pruned"]
  return out


def is_surplus(study: optuna.Study, number: int, num_trials: int) -> bool:
  """Whether running trial `number` is one too many for a study of `num_trials`.

  A worker starts a trial only while finished + running trials are fewer than
  `num_trials`, but two workers can pass that check at the same moment and both start
  one (Optuna has no lock for it). Each new trial therefore checks again once it exists:
  of the running trials, only the `num_trials - finished` lowest-numbered may go on. Every
  worker sees the same trials, so exactly the later ones drop out, whichever checks first.
  """
  trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
  finished = sum(t.state in FINISHED for t in trials)
  running = sorted(t.number for t in trials if t.state == TrialState.RUNNING)
  return number in running and running.index(number) >= num_trials - finished


def make_sampler(search, salt: tuple[int, ...]) -> optuna.samplers.BaseSampler:
  """The sampler, seeded from the search seed and `salt` (worker index, trials so far), so
  that workers and restarts do not draw the same graphs while one schedule stays
  reproducible."""
  seed = int(np.random.SeedSequence([int(search.seed), *salt]).generate_state(1)[0])
  if search.sampler == "tpe":
    return optuna.samplers.TPESampler(seed=seed)
  return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(search) -> optuna.pruners.BasePruner:
  if search.pruner == "successive_halving":
    return optuna.pruners.SuccessiveHalvingPruner()
  if search.pruner == "hyperband":
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=search.num_epochs)
  return optuna.pruners.NopPruner()


def space_description(config) -> dict:
  s = config.search
  return {
    "k": config.model.k,
    "gates": space.names(s.gates),
    "transfer": space.names(s.transfer_methods) or [config.graph.transfer],
    "objective": s.objective,
    "generator": s.generator,
    "num_epochs": s.num_epochs,
    "eval_samples": s.eval_samples,
    "eval_every_epochs": s.eval_every_epochs,
    # Only when not the default, so that studies made before the field existed still load.
    **({"select": s.select} if s.select != "best" else {}),
  }


def create_or_load(config, study_dir: str, storage, config_spec: str, overrides: list[str]):
  """Creates the study (or loads it) and checks that it is the same search."""
  s = config.search
  direction = space.objectives()[s.objective]
  study = optuna.create_study(
    study_name=s.study_name, storage=storage, direction=direction, load_if_exists=True
  )
  described = space_description(config)
  if "space" not in study.user_attrs:
    study.set_user_attr("space", described)
    study.set_user_attr("config", config_spec)
    study.set_user_attr("overrides", overrides)
    study.set_user_attr("study_dir", os.path.abspath(study_dir))
  elif study.user_attrs["space"] != described:
    old = study.user_attrs["space"]
    diff = sorted(key for key in described if old.get(key) != described[key])
    field = diff[0] if diff else "space"
    raise ConfigError(
      f"study {s.study_name!r} in this storage was created with {field}={old.get(field)!r}, "
      f"not {described.get(field)!r}; use another --study_dir/--storage or "
      f"--config.search.study_name"
    )
  return study


def _same_graph(study: optuna.Study, params: dict, number: int):
  for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
    if t.number != number and t.params == params and "best" in t.user_attrs:
      return t
  return None


def _prepare_trial(trial, config, study_dir: str, config_spec: str, overrides: list[str]):
  """Draws the trial's graph and records it in its user attrs.

  Returns:
    (params, workdir, twin): `twin` is a complete trial of the same graph (then the
    trial reuses its result and `workdir` is None).
  """
  s, k = config.search, config.model.k
  params = space.suggest(trial, config)
  gates_d, gates_transfer = space.graph_text(params, k)
  trial.set_user_attr("gates_d", gates_d)
  trial.set_user_attr("gates_transfer", gates_transfer)
  trial.set_user_attr("transfer", params.get("transfer", config.graph.transfer))
  trial.set_user_attr(
    "command", space.retrain_command(config_spec, overrides, params, k, s.num_epochs)
  )
  twin = _same_graph(trial.study, params, trial.number)
  if twin is not None:  # same graph, same seed: same run; do not train it again
    _copy_result(twin, trial)
    logging.info(
      "Trial %d: the graph of trial %d again; its result is reused.", trial.number, twin.number
    )
    return params, None, twin
  workdir = trial.user_attrs.get("workdir") or os.path.join(study_dir, "trials", str(trial.number))
  trial.set_user_attr("workdir", os.path.abspath(workdir))
  logging.info(
    "Trial %d: gates_d=%s gates_transfer=%s in %s", trial.number, gates_d, gates_transfer, workdir
  )
  return params, workdir, None


def _copy_result(twin, trial) -> None:
  for key in ("best", "train_s", "eval_s", "wall_s", "workdir", "population"):
    if key in twin.user_attrs:
      trial.set_user_attr(key, twin.user_attrs[key])
  trial.set_user_attr("duplicate_of", twin.number)


def _finish_trial(trial, config, result, start: float, wall: float, train_s: float | None):
  """Records a trained trial's times and best evaluation; returns its objective value.

  Args:
    train_s: the trial's training seconds; None: its wall time less its evaluations.

  Raises:
    optuna.TrialPruned: a callback stopped it; SearchInterrupted: a signal stopped it (it
      was checkpointed and queued again); RuntimeError: it recorded no objective.
  """
  s = config.search
  workdir = trial.user_attrs["workdir"]
  mine = [r for r in result.scores if _timestamp(r) >= start - 1.0]  # this attempt's
  eval_s = sum(float(r.get("eval_s", 0.0)) for r in mine)
  trial.set_user_attr("wall_s", round(wall, 2))
  trial.set_user_attr("eval_s", round(eval_s, 2))
  trial.set_user_attr("train_s", round(wall - eval_s if train_s is None else train_s, 2))
  best = space.chosen_record(result.scores, s)
  if best is not None:
    trial.set_user_attr(
      "best",
      {key: best[key] for key in ("step", "epoch", "generators", "num_samples", "weights")},
    )
  if result.stopped not in (None, "callback"):
    requeue(trial.study, trial.study.trials[trial.number], s.max_retry + 1)
    raise SearchInterrupted(
      f"{result.stopped} during trial {trial.number}, which was checkpointed and queued again"
    )
  if not s.keep_checkpoints:
    for sub in ("checkpoints", "best"):
      shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
  if result.stopped == "callback":
    raise optuna.TrialPruned(f"pruned after epoch {result.scores[-1]['epoch']}")
  if best is None:
    raise RuntimeError(f"trial {trial.number} recorded no {s.objective} in {workdir}")
  return space.objective_value(best, s.objective, s.generator)


def _reporter(trial, config):
  """The training callback of one trial: reports each evaluation; True: prune it."""
  s = config.search

  def report(record: dict) -> bool:
    value = space.objective_value(record, s.objective, s.generator)
    trial.report(value, record["epoch"])
    return trial.should_prune()

  return report


class Objective:
  """The Optuna objective: trains one graph; returns its best evaluation's objective.

  It also keeps where its latest trial got to, which `run_worker` reads once
  `study.optimize` returns or raises:

  Attributes:
    trial_id: the latest trial's id (None before the first).
    reached: None, 'running', 'done' (Optuna may refuse the final tell of a trial another
      worker took over), 'taken' (Optuna refused a write: another worker took it),
      SURPLUS or INTERRUPTED.
    interrupted: an INTERRUPTED trial's message.
    heartbeat: the journal store's `Heartbeat` (None on an RDB).
  """

  def __init__(self, config, study_dir: str, journal: bool, config_spec: str, overrides):
    self.config, self.study_dir = config, study_dir
    self.config_spec, self.overrides = config_spec, overrides
    self.heartbeat = Heartbeat(study_dir, config.search.heartbeat_s) if journal else None
    self.reset()

  def reset(self) -> None:
    self.trial_id, self.reached, self.interrupted = None, None, ""

  def train_trial(self, trial: optuna.Trial) -> float:
    config = self.config
    params, workdir, twin = _prepare_trial(
      trial, config, self.study_dir, self.config_spec, self.overrides
    )
    if twin is not None:
      return twin.value
    start = time.time()
    try:
      result = train.train_and_evaluate(
        space.trial_config(config, params), workdir, [_reporter(trial, config)]
      )
    except train.TrainingDiverged as e:
      trial.set_user_attr("diverged", str(e))
      raise optuna.TrialPruned(f"diverged: {e}") from None
    try:
      return _finish_trial(trial, config, result, start, time.time() - start, None)
    except SearchInterrupted as e:
      self.interrupted = str(e)
      raise

  def __call__(self, trial: optuna.Trial) -> float:
    s = self.config.search
    self.trial_id, self.reached = trial._trial_id, "running"
    # Alive from the first moment: this process's identity (a live pid on this host is
    # never failed as stale), and on the journal store a heartbeat that `run_worker` stops
    # only once Optuna has told the trial's end.
    for key, value in worker_attrs().items():
      trial.set_user_attr(key, value)
    if self.heartbeat is not None:
      self.heartbeat.start(trial.number)
    if is_surplus(trial.study, trial.number, s.num_trials):
      self.reached = SURPLUS
      trial.set_user_attr(
        SURPLUS, "another worker started the study's last trial at the same moment"
      )
      logging.info(
        "Another worker started the study's last trial at the same moment as this worker; "
        "this one (trial %d) was dropped before training (failed as 'surplus', not counted).",
        trial.number,
      )
      raise SurplusTrial(trial.number)
    try:
      value = self.train_trial(trial)
    except SearchInterrupted:
      self.reached = INTERRUPTED
      raise
    except optuna.TrialPruned:
      self.reached = "done"
      raise
    except optuna.exceptions.UpdateFinishedTrialError:
      self.reached = "taken"
      raise
    self.reached = "done"
    return value


def _tell(study: optuna.Study, trial: optuna.Trial, **kwargs) -> bool:
  """study.tell, except for a trial another worker failed as stale meanwhile (it was
  re-queued, and that copy carries on from its workdir): logged, False."""
  try:
    study.tell(trial, **kwargs)
    return True
  except Exception:
    if not _taken_over(study, trial._trial_id):
      raise
    logging.warning(
      "Another worker failed trial %d as stale (its heartbeat was late) and queued it again; "
      "going on.",
      trial.number,
    )
    return False


def _structure(config) -> str:
  """What members of one population must share: every field but the per-member ones."""
  from cgan_jax.run import population

  return json.dumps(population._flat(config), sort_keys=True, default=str)


def run_population_round(
  study: optuna.Study,
  config,
  study_dir: str,
  heartbeat: Heartbeat | None,
  size: int,
  config_spec: str,
  overrides: list[str],
) -> int:
  """Asks Optuna for `size` trials and trains them as populations (config.search.population).

  Trials that share a structure train as one population, each in its own
  `trials/<number>/` workdir (a re-queued one resumes from its checkpoint at its own step),
  each evaluation reported to its own trial. When a member's trial ends (complete, pruned,
  or diverged: pruned alone) it is told at once and its slot is refilled with a newly asked
  trial, which starts from its own fresh state and step 0 while the other members go on
  undisturbed (`population.train_population`'s refill); a new trial of another structure
  (a searched transfer method) waits for a population of its own after this one. The
  round ends when the study needs no more trials. Every trial is told before this returns.

  Returns:
    How many trials this round finished (complete or pruned).

  Raises:
    SearchInterrupted: a signal stopped the round; its trials were checkpointed and
      queued again (after every trial was told).
  """
  from cgan_jax.run import population

  s = config.search
  held: dict = {}  # trial number -> trial: asked and not yet told
  state = {"finished": 0, "interrupted": "", "error": None}

  def beat():
    if heartbeat is not None:
      heartbeat.set(sorted(held))

  def tell(trial, **kwargs):
    told = _tell(study, trial, **kwargs)
    held.pop(trial.number, None)
    beat()
    state["finished"] += told and kwargs.get("state") != TrialState.FAIL

  def needs_more() -> bool:
    c = counts(study)
    return c["finished"] + c["running"] < s.num_trials or c["waiting"] > 0

  def ask():
    """The next trainable job (trial, params, workdir, structure), or None; trials that
    repeat a complete graph or are surplus are told here."""
    while needs_more() and not state["interrupted"] and stop_lib.pending is None:
      trial = study.ask()
      held[trial.number] = trial
      for key, value in worker_attrs().items():
        trial.set_user_attr(key, value)
      beat()
      if is_surplus(study, trial.number, s.num_trials):
        trial.set_user_attr(SURPLUS, "another worker started the study's last trial at once")
        logging.info(
          "Trial %d was one too many (another worker started the study's last trials at the "
          "same moment): dropped before training (failed as 'surplus', not counted).",
          trial.number,
        )
        tell(trial, state=TrialState.FAIL)
        continue
      params, workdir, twin = _prepare_trial(trial, config, study_dir, config_spec, overrides)
      if twin is not None:
        tell(trial, values=twin.value)
        continue
      return trial, params, workdir, _structure(space.trial_config(config, params))
    return None

  def outcome(job, result, start: float) -> dict:
    trial = job[0]
    if result.stopped == "diverged":
      trial.set_user_attr("diverged", result.detail)
      return {"state": TrialState.PRUNED}
    try:
      wall = time.time() - start
      return {"values": _finish_trial(trial, config, result, start, wall, result.train_s)}
    except optuna.TrialPruned:
      return {"state": TrialState.PRUNED}
    except SearchInterrupted as e:
      state["interrupted"] = state["interrupted"] or str(e)
      trial.set_user_attr(INTERRUPTED, str(e))
      return {"state": TrialState.FAIL}
    except RuntimeError as e:
      state["error"] = state["error"] or e
      return {"state": TrialState.FAIL}

  waiting: list = []  # jobs of another structure than the population in training
  try:
    while not state["interrupted"]:
      jobs = []
      while waiting and len(jobs) < size:
        if jobs and waiting[0][3] != jobs[0][3]:
          break
        jobs.append(waiting.pop(0))
      while len(jobs) < size:
        job = ask()
        if job is None:
          break
        (jobs if not jobs or job[3] == jobs[0][3] else waiting).append(job)
      if not jobs:
        break
      structure = jobs[0][3]
      slots = list(jobs)
      starts = [time.time()] * len(slots)
      numbers = ", ".join(str(j[0].number) for j in slots)
      logging.info("Trials %s: one population of %d.", numbers, len(slots))
      for job in slots:
        job[0].set_user_attr("population", {"size": len(slots), "trials": numbers})

      def callback(m, record, slots=slots):
        try:
          return _reporter(slots[m][0], config)(record)
        except optuna.exceptions.UpdateFinishedTrialError:
          return True  # taken over by another worker: stop spending on it

      def refill(m, result, slots=slots, starts=starts, structure=structure):
        tell(slots[m][0], **outcome(slots[m], result, starts[m]))
        while True:
          job = waiting.pop(0) if waiting and waiting[0][3] == structure else ask()
          if job is None:
            return None
          if job[3] == structure:
            break
          waiting.append(job)  # trained in a population of its own structure later
        slots[m], starts[m] = job, time.time()
        job[0].set_user_attr("population", {"size": len(slots), "slot": m, "refill": True})
        logging.info("Trial %d takes slot %d of the population.", job[0].number, m)
        return space.trial_config(config, job[1]), job[2]

      results = population.train_population(
        [space.trial_config(config, j[1]) for j in slots],
        [j[2] for j in slots],
        callbacks=[callback],
        on_diverge="drop",
        refill=refill,
      )
      for m, result in enumerate(results):
        if result is not None:
          tell(slots[m][0], **outcome(slots[m], result, starts[m]))
    for job in waiting:  # a signal stopped the round before their population started
      requeue(study, study.trials[job[0].number], s.max_retry + 1)
      job[0].set_user_attr(INTERRUPTED, state["interrupted"] or "stopped")
      tell(job[0], state=TrialState.FAIL)
  finally:
    if heartbeat is not None:
      heartbeat.stop()
  if state["error"] is not None:
    raise state["error"]
  if state["interrupted"]:
    raise SearchInterrupted(state["interrupted"])
  return state["finished"]


def _timestamp(record: dict) -> float:
  return datetime.fromisoformat(record["time"]).timestamp() if "time" in record else 0.0


def run_worker(
  config,
  study_dir: str,
  storage_url: str,
  worker_index: int,
  config_spec: str,
  overrides: list[str],
) -> dict:
  """Runs trials until the study has `num_trials` finished ones; returns the final counts."""
  s = config.search
  journal = not storage_url
  storage = open_storage(study_dir, storage_url, s)
  study = create_or_load(config, study_dir, storage, config_spec, overrides)
  fail_stale_trials(study, study_dir, s, journal)
  study = optuna.load_study(
    study_name=s.study_name,
    storage=storage,
    sampler=make_sampler(s, (worker_index, len(study.trials))),
    pruner=make_pruner(s),
  )
  objective = Objective(config, study_dir, journal, config_spec, overrides)
  start, done_here = time.time(), 0
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  while True:
    if stop_lib.pending is not None:
      raise SearchInterrupted(f"{stop_lib.pending} between trials")
    fail_stale_trials(study, study_dir, s, journal)
    c = counts(study)
    if c["finished"] >= s.num_trials:
      break
    if c["finished"] + c["running"] >= s.num_trials and not c["waiting"]:
      logging.info("Waiting for %d running trial(s) of other workers.", c["running"])
      time.sleep(s.heartbeat_s)
      continue
    if s.population > 1:
      size = max(1, min(s.population, s.num_trials - c["finished"] - c["running"]))
      done_here += run_population_round(
        study, config, study_dir, objective.heartbeat, size, config_spec, overrides
      )
      _log_progress(study, s, done_here, start)
      continue
    objective.reset()
    try:
      study.optimize(
        objective, n_trials=1, gc_after_trial=False, catch=(SurplusTrial, SearchInterrupted)
      )
    except Exception:
      # Another worker failed this worker's trial as stale and queued it again (a trial on
      # another host whose heartbeat was late by grace_s); that copy carries on from its
      # workdir. Optuna then refuses our report (UpdateFinishedTrialError) or our final
      # tell: a ValueError ('Cannot tell a FAIL trial'), which Optuna 5's post-processing
      # turns into an AssertionError ('Should not reach') when the objective had returned
      # a value. None of these may end the worker; any other error still does.
      if objective.reached not in ("taken", "done") or not _taken_over(study, objective.trial_id):
        raise
      logging.warning(
        "Another worker failed this worker's trial as stale (its heartbeat was more than "
        "grace_s=%s s late) and queued it again; going on with the next trial.",
        s.grace_s,
      )
      continue
    finally:
      if objective.heartbeat is not None:
        objective.heartbeat.stop()  # the trial is told (or taken): no more beats
    if objective.reached == INTERRUPTED:  # checkpointed and queued again by the objective
      raise SearchInterrupted(objective.interrupted)
    if objective.reached == SURPLUS:  # logged by the objective
      continue
    done_here += 1
    _log_progress(study, s, done_here, start)
  return counts(study)


def _log_progress(study: optuna.Study, s, done_here: int, start: float) -> None:
  c = counts(study)
  rate = done_here / max(time.time() - start, 1e-9) * 3600
  left = max(s.num_trials - c["finished"], 0)
  logging.info(
    "Study %s: %d/%d trials finished (%d complete, %d pruned, %d failed); this worker: "
    "%.1f trials/h, ETA %s at this rate.",
    s.study_name,
    c["finished"],
    s.num_trials,
    c["complete"],
    c["pruned"],
    c["fail"],
    rate,
    _eta(left / rate * 3600 if rate else float("inf")),
  )


def _eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "unknown"
  h, rem = divmod(int(seconds), 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def best_trials(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
  """The top finished trials with a value, best first (duplicates of a graph once)."""
  maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
  trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.value is not None]
  trials.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
  seen, out = set(), []
  for t in trials:
    key = json.dumps(t.params, sort_keys=True)
    if key not in seen:
      seen.add(key)
      out.append(t)
  return out[:top]
