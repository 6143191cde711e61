"""Device mesh and shardings for data-parallel training.

One code path serves 1..N devices: every global batch is split along its first axis over
the mesh axis 'data', and `jax.jit` partitions the step (GSPMD). Batch statistics
(BatchNorm, the discriminator's losses) are therefore computed over the global batch,
exactly as on one device.

The mesh is [data, gen]. With `config.train.gen_devices = g > 1` (g divides k and the
device count) the k generators' parameters, BatchNorm statistics, optimizer state and EMA
are split over the 'gen' axis, k / g generators per device group, so their updates run
on different devices; the discriminator is replicated. With g = 1 (the default) the
state is replicated on every device.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cgan_jax.errors import ConfigError

DATA = "data"
GEN = "gen"

# The XLA:CPU option sets live in `cgan_jax.xla_setup` (shared with `quality/`); the
# names stay importable from here.
from cgan_jax.xla_setup import (  # noqa: E402, F401 - re-exported
  CPU_COMPILER_OPTIONS,
  CPU_INIT_COMPILER_OPTIONS,
  OPT_LEVEL,
  compiler_options,
  init_compiler_options,
)


def make_mesh(devices=None, gen: int = 1) -> Mesh:
  """A [data, gen] mesh over all (or the given) devices; gen = 1 is plain data parallelism.

  Raises:
    ConfigError: gen does not divide the number of devices.
  """
  devices = np.asarray(devices if devices is not None else jax.devices()).reshape(-1)
  if not isinstance(gen, int) or gen < 1 or devices.size % gen:
    raise ConfigError(
      f"config.train.gen_devices={gen!r} must be a positive divisor of the {devices.size} devices"
    )
  return Mesh(devices.reshape(-1, gen), (DATA, GEN))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_mesh(config, mesh: Mesh) -> None:
  """Raises ConfigError unless the global batch splits evenly over the 'data' axis.

  (That gen_devices divides k is checked by `configlib.validate_config`, that it divides
  the device count by `make_mesh`.)
  """
  n, batch_size = mesh.shape[DATA], config.train.batch_size
  if batch_size % n:
    raise ConfigError(
      f"config.train.batch_size={batch_size} is not divisible by the {n} data-parallel "
      f"devices; use a multiple of {n}"
    )


def state_sharding(state, mesh: Mesh):
  """Shardings for a `GANState`: generator leaves [k, ...] over 'gen', the rest replicated."""
  k = jax.tree.leaves(state.g_params)[0].shape[0]

  def per_generator(tree):
    def spec(leaf):
      split = mesh.shape[GEN] > 1 and np.ndim(leaf) >= 1 and np.shape(leaf)[0] == k
      return NamedSharding(mesh, PartitionSpec(GEN) if split else PartitionSpec())

    return jax.tree.map(spec, tree)

  rep = replicated(mesh)
  return jax.tree.map(lambda _: rep, state).replace(
    g_params=per_generator(state.g_params),
    g_batch_stats=per_generator(state.g_batch_stats),
    g_opt_state=per_generator(state.g_opt_state),
    g_ema=per_generator(state.g_ema),
  )


def shard_step(step_fn, state_shardings):
  """`jax.jit` of step_fn(state, *args) -> (state, metrics) for a mesh.

  The state is donated and constrained to `state_shardings` on the way out, so the
  generators stay where `state_sharding` put them step after step; the CPU compiler
  options of `compiler_options` apply.
  """

  def step(state, *args):
    state, metrics = step_fn(state, *args)
    return jax.lax.with_sharding_constraint(state, state_shardings), metrics

  return jax.jit(step, donate_argnums=(0,), compiler_options=compiler_options())
