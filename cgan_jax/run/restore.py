"""Reading back a training run: its saved config and a checkpoint (no flags defined here)."""

import json
import os

import jax
import ml_collections

from cgan_jax import configlib
from cgan_jax.core import state as state_lib
from cgan_jax.errors import ConfigError
from cgan_jax.run import checkpointing


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The validated config saved by a training run in `workdir`."""
  path = os.path.join(workdir or "", "config.json")
  if not workdir or not os.path.isfile(path):
    raise ConfigError(f"--workdir={workdir!r} holds no training run (no config.json)")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  configlib.validate_config(config)
  return config


def restore_run(workdir: str, which: str):
  """(config, state, step, generator) of checkpoint `which` of the run in `workdir`."""
  config = load_run_config(workdir)
  generator, discriminator = state_lib.make_models(config)
  tx_g, tx_d = state_lib.make_optimizers(config)
  init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  target = state_lib.create_train_state(
    init_key, config=config, generator=generator, discriminator=discriminator, tx_g=tx_g, tx_d=tx_d
  )
  state, step = checkpointing.restore_step(workdir, which, target)
  return config, state, step, generator
