"""Trains collaborative GANs: `python -m cgan_jax.main --config=configs/cifar64.py --workdir=DIR`.

Config fields can be overridden with `--config.x.y=value` (a mistyped field fails).
Variants go after a colon: `--config=configs/cifar64.py:madgan,smoke`.

Multi-host (GPU clusters, TPU pods): start the same command on every host with
`--distributed`, which calls `jax.distributed.initialize` before anything touches a
device. On TPU pods, Slurm and Open MPI it finds its peers by itself; elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""

from cgan_jax.run import stop  # standard library only

if __name__ == "__main__":
  # First, before JAX is imported: Ctrl-C / SIGTERM end start-up (imports, parsing,
  # compiling, resuming) at once with one line, and later stop with a checkpoint.
  stop.install()

import ast  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cgan_jax import cli, configlib  # noqa: E402
from cgan_jax.errors import check_writable  # noqa: E402
from cgan_jax.run import population, train  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so that the CLI modules can be imported together."""
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
  config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/cifar64.py:proposed.", lock_config=True
  )
  flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize first.")
  flags.DEFINE_string("coordinator_address", None, "With --distributed: HOST:PORT of process 0.")
  flags.DEFINE_integer("num_processes", None, "With --distributed: number of processes.")
  flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
  flags.DEFINE_bool("print_config", False, "Print the resolved config (every field) and exit.")


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def configs_help() -> str:
  """The config files next to the package and their variants (their docstrings)."""
  parts = ["Configs (--config=FILE[:variant,...]):"]
  for name in sorted(os.listdir(CONFIGS)) if os.path.isdir(CONFIGS) else []:
    if name.endswith(".py"):
      with open(os.path.join(CONFIGS, name)) as f:
        doc = (ast.get_docstring(ast.parse(f.read())) or "").splitlines()
      # its first line and its variants table ("  name   what it is", continued below)
      rows = []
      for ln in doc[1:]:
        if re.match(r"^  (\S+\s{2,}|\s{8,})\S", ln):
          rows.append(ln)
        elif rows:  # the first table only
          break
      parts.append("\n".join([f"\nconfigs/{name}: {doc[0] if doc else ''}", *rows]))
  parts.append(
    "\nEvery field can be overridden with --config.FIELD=VALUE; see them all with "
    "--config=FILE --print_config."
  )
  return "\n".join(parts)


def _initialize_distributed() -> None:
  explicit = {
    "coordinator_address": FLAGS.coordinator_address,
    "num_processes": FLAGS.num_processes,
    "process_id": FLAGS.process_id,
  }
  given = [name for name, value in explicit.items() if value is not None]
  if not FLAGS.distributed:
    if given:
      cli.fail(f"--{given[0]} needs --distributed")
    return
  if given and len(given) < 3:
    missing = sorted(set(explicit) - set(given))
    cli.fail(f"--distributed with --{given[0]} also needs --{' --'.join(missing)}")
  if FLAGS.num_processes is not None and not 0 <= FLAGS.process_id < FLAGS.num_processes:
    cli.fail(
      f"--process_id={FLAGS.process_id} must be in [0, --num_processes={FLAGS.num_processes})"
    )
  jax.distributed.initialize(**explicit)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.config_from_flag("config")
  if config is None:
    cli.fail("--config is required, e.g. --config=configs/cifar64.py:smoke")
  if FLAGS.print_config:
    configlib.validate_config(config)  # an invalid config is one error line, exit 2
    print(config)
    return
  if not FLAGS.workdir:
    cli.fail("--workdir is required")
  _initialize_distributed()
  logging.info(
    "Process %d of %d; JAX devices: %s", jax.process_index(), jax.process_count(), jax.devices()
  )
  try:
    if configlib.population_seeds(config):
      _train_population(config, FLAGS.workdir)
    else:
      train.train_and_evaluate(config, FLAGS.workdir)
  except train.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _train_population(config, workdir: str) -> None:
  """--config.population.seeds=0,1,2: the seeds as one population, in DIR/seed<s>."""
  configs = population.member_configs(config)
  workdirs = population.member_workdirs(workdir, configs)
  population.check_members(configs)
  check_writable(workdir, "--workdir")
  population.train_population(configs, workdirs, root=workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main, extra_help=configs_help())
