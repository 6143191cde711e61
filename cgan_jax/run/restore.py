"""Reading back a training run: its saved config and a checkpoint (no flags defined here)."""

import json
import os

import jax
import ml_collections

from cgan_jax import configlib
from cgan_jax.errors import ConfigError
from cgan_jax.run import builder, checkpointing


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The validated config saved by a training run in `workdir`."""
  path = os.path.join(workdir or "", "config.json")
  if not workdir or not os.path.isfile(path):
    raise ConfigError(f"--workdir={workdir!r} holds no training run (no config.json)")
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(f"--workdir={workdir!r}: {path} is unreadable ({e})") from None
  configlib.validate_config(config)
  return config


def restore_run(workdir: str, which: str):
  """(config, state, step, generator) of checkpoint `which` of the run in `workdir`."""
  config = load_run_config(workdir)
  init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  target = builder.init_state(config, init_key)
  state, step = checkpointing.restore_step(workdir, which, target)
  generator, _ = builder.make_models(config)
  return config, state, step, generator
