"""Trains collaborative GANs: `python -m cgan_jax.main --config=configs/cifar64.py --workdir=DIR`.

Config fields can be overridden with `--config.x.y=value` (a mistyped field fails).
Variants go after a colon: `--config=configs/cifar64.py:madgan,smoke`.
"""

import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from cgan_jax import cli, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/cifar64.py:proposed.", lock_config=True
)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.config is None:
    cli.fail("--config is required, e.g. --config=configs/cifar64.py:smoke")
  if not FLAGS.workdir:
    cli.fail("--workdir is required")
  logging.info("JAX devices: %s", jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
