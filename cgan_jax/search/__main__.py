"""Knowledge-transfer-graph search with Optuna.

  python -m cgan_jax.search --config=configs/search.py --study_dir=DIR [--workers=N]
  python -m cgan_jax.search report --study_dir=DIR [--top=10] [--compare=DIR2,DIR3]

The first runs trials until the study has `config.search.num_trials` finished ones
(re-running it continues the same study; a finished study exits 0). Each trial trains one
graph in `DIR/trials/<number>/` (a normal workdir) and its user attributes hold the gates
in the text form `--config.graph.gates_d` / `gates_transfer` accept. `--workers=N` starts N
worker processes here (one GPU each where there are several); `--storage=postgresql://...`
shares one study between hosts that each run the same command. `report` writes best.csv,
best.md, graph_best.png and figure7.png into DIR (or --out).
"""

import os
import shutil
import signal
import subprocess
import sys

from absl import flags, logging
from ml_collections import config_flags

from cgan_jax import cli
from cgan_jax.errors import ConfigError, check_writable

FLAGS = flags.FLAGS
CHILD_ENV = "CGAN_JAX_SEARCH_WORKER"  # set in the workers --workers=N starts


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", None, "Search config, e.g. configs/search.py:smoke.", lock_config=True
  )
  flags.DEFINE_string("study_dir", None, "Folder of the study: journal, trials/, report.")
  flags.DEFINE_string("storage", "", "RDB URL shared by several hosts (default: DIR/journal.log).")
  flags.DEFINE_integer("workers", 1, "Worker processes on this machine.")
  flags.DEFINE_string(
    "objective",
    None,
    "Overrides config.search.objective: a metric of the registry (is, fid, kid, ...).",
  )
  flags.DEFINE_integer("top", 10, "report: how many graphs best.csv/best.md list.")
  flags.DEFINE_string("out", None, "report: output folder (default: --study_dir).")
  flags.DEFINE_string("study_name", None, "report: the study's name (default: the only one).")
  flags.DEFINE_list(
    "compare",
    [],
    "report: more study folders (journal store) whose trials figure7.png draws beside this "
    "study's, a box per transfer method (e.g. one study per method: 1,500 trials each).",
  )
  flags.DEFINE_integer("worker_index", 0, "Internal: this worker's index among --workers.")


def _overrides(argv: list[str]) -> list[str]:
  return [a for a in argv if a.startswith("--config.") and not a.startswith("--config.search.")]


def check_weights(config) -> None:
  """Fails fast when the objective's Inception weights are not there."""
  from cgan_jax.quality import weights as weights_lib

  objective = config.search.objective
  spec = config.eval.inception_weights
  try:
    weights = weights_lib.load_weights(spec)
  except weights_lib.WeightsUnavailable as e:
    raise ConfigError(
      f"config.search.objective={objective!r} needs Inception weights, but "
      f"config.eval.inception_weights={spec!r} is unavailable ({str(e).splitlines()[0]})"
    ) from None
  from cgan_jax.quality import registry

  if registry.LOGITS in registry.get(objective, "config.search.objective").needs and not (
    weights.has_logits
  ):
    raise ConfigError(
      f"config.search.objective={objective!r} needs the full Inception weights with logits, but "
      f"config.eval.inception_weights={spec!r} gave {weights.name} (pool3 only): put "
      f"pt_inception-2015-12-05-6726825d.pth at {weights_lib.expected_full_path()} or search "
      f"with --objective=fid"
    )


def gpu_count() -> int:
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return len([v for v in visible.split(",") if v.strip()])
  if shutil.which("nvidia-smi") is None:
    return 0
  r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
  return (
    len([ln for ln in r.stdout.splitlines() if ln.startswith("GPU ")]) if r.returncode == 0 else 0
  )


def _die_with_parent() -> None:
  """In each worker before it starts (Linux): SIGTERM when the parent process dies, so
  that killing `search --workers=N` (even with SIGKILL) leaves no worker behind."""
  try:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def spawn_workers(n: int, argv: list[str]) -> int:
  """Starts n copies of this command as single workers; returns the worst exit code.

  SIGTERM and SIGINT are forwarded to every worker, which finishes its step, checkpoints
  its trial, queues it again and exits 0; the parent waits for all of them."""
  gpus = gpu_count()
  visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
  base, skip = [], False
  for a in argv[1:]:
    if skip:
      skip = False
    elif a in ("--workers", "--worker_index"):
      skip = True  # its value is the next argument
    elif not a.startswith(("--workers=", "--worker_index=")):
      base.append(a)
  procs = []
  for i in range(n):
    env = dict(os.environ)
    if gpus > 1:
      env["CUDA_VISIBLE_DEVICES"] = visible[i % gpus] if visible else str(i % gpus)
    env[CHILD_ENV] = "1"
    cmd = [sys.executable, "-m", "cgan_jax.search", *base, "--workers=1", f"--worker_index={i}"]
    procs.append(subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent))
    logging.info(
      "Worker %d: pid %d%s",
      i,
      procs[-1].pid,
      f", GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus > 1 else "",
    )
  received = []

  def forward(signum, frame):
    del frame
    received.append(signal.Signals(signum).name)
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    codes = [p.wait() for p in procs]
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)
  if received:
    logging.warning(
      "%s: forwarded to the %d workers, which checkpointed their trials and stopped.",
      received[0],
      n,
    )
  for i, code in enumerate(codes):
    if code:
      logging.error(
        "Worker %d exited with %s.", i, f"signal {-code}" if code < 0 else f"code {code}"
      )
  bad = [128 - c if c < 0 else c for c in codes if c]
  return max(bad, default=0)


def report_main() -> None:
  import optuna

  from cgan_jax.search import report as report_lib
  from cgan_jax.search import study as study_lib

  if not FLAGS.study_dir:
    cli.fail("report needs --study_dir")
  if not FLAGS.storage and not os.path.isfile(os.path.join(FLAGS.study_dir, study_lib.JOURNAL)):
    cli.fail(f"--study_dir={FLAGS.study_dir!r} holds no study ({study_lib.JOURNAL} is missing)")
  out = FLAGS.out or FLAGS.study_dir
  check_writable(out, "--out")
  storage = FLAGS.storage or study_lib.open_storage(FLAGS.study_dir, "", None)
  names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
  name = FLAGS.study_name or (names[0] if len(names) == 1 else None)
  if name not in names:
    cli.fail(f"--study_name={name!r}: the storage holds {names}; name one")
  study = optuna.load_study(study_name=name, storage=storage)
  compare = []
  for folder in FLAGS.compare:
    if not os.path.isfile(os.path.join(folder, study_lib.JOURNAL)):
      cli.fail(f"--compare={folder!r} holds no study ({study_lib.JOURNAL} is missing)")
    other = study_lib.open_storage(folder, "", None)
    other_names = [s.study_name for s in optuna.get_all_study_summaries(other)]
    if len(other_names) != 1:
      cli.fail(f"--compare={folder!r} holds {len(other_names)} studies {other_names}; give one")
    compare.append(optuna.load_study(study_name=other_names[0], storage=other))
  try:
    paths = report_lib.write_report(study, out, FLAGS.top, compare)
  except ValueError as e:
    cli.fail(f"study {name!r}: {e}")
  for p in paths:
    print(p)
  best = study_lib.best_trials(study, 1)[0]
  print(f"Best: trial {best.number}, objective {best.value:.4f}. Re-train it with:")
  print(best.user_attrs.get("command", ""))


def main(argv):
  from cgan_jax.search import space

  if argv[1:] == ["report"]:
    return report_main()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (the only command is 'report')")
  config = cli.config_from_flag("config")
  if config is None:
    cli.fail("--config is required, e.g. --config=configs/search.py:smoke")
  if not FLAGS.study_dir:
    cli.fail("--study_dir is required")
  if FLAGS.workers < 1:
    cli.fail(f"--workers={FLAGS.workers} must be >= 1")
  if FLAGS.objective:
    with config.unlocked():
      config.search.objective = FLAGS.objective
  space.validate(config)
  check_writable(FLAGS.study_dir, "--study_dir")
  check_weights(config)

  from cgan_jax.search import study as study_lib

  spec = FLAGS["config"].config_filename
  config_arg = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), spec)
  overrides = _overrides(sys.argv)
  storage = study_lib.open_storage(FLAGS.study_dir, FLAGS.storage, config.search)
  study = study_lib.create_or_load(config, FLAGS.study_dir, storage, config_arg, overrides)
  c = study_lib.counts(study)
  if (
    not os.environ.get(CHILD_ENV) and c["finished"] >= config.search.num_trials and not c["running"]
  ):
    print(
      f"Study {study.study_name!r} already has {c['finished']} finished trials "
      f"(config.search.num_trials={config.search.num_trials}); nothing to run. Report: "
      f"python -m cgan_jax.search report --study_dir={FLAGS.study_dir}"
    )
    return
  if FLAGS.workers > 1:
    code = spawn_workers(FLAGS.workers, sys.argv)
    if code:
      sys.exit(code)
  else:
    from cgan_jax.run import stop

    stop.record_signals()  # SIGTERM / Ctrl-C at any moment: checkpoint, re-queue, exit 0
    try:
      study_lib.run_worker(
        config, FLAGS.study_dir, FLAGS.storage, FLAGS.worker_index, config_arg, overrides
      )
    except study_lib.SearchInterrupted as e:
      print(f"Stopped: {e}. Re-run the same command to continue.")
      return  # a clean stop (preemption, Ctrl-C): exit 0, as a training run does
  if not os.environ.get(CHILD_ENV):
    c = study_lib.counts(study)
    print(
      f"Study {study.study_name!r}: {c['finished']} finished trials ({c['complete']} complete, "
      f"{c['pruned']} pruned, {c['fail']} failed). Report: python -m cgan_jax.search report "
      f"--study_dir={FLAGS.study_dir}"
    )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
