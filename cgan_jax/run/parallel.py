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

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cgan_jax.errors import ConfigError

DATA = "data"
GEN = "gen"

# XLA:CPU runs dots, reductions and convolutions through YNNPACK by default. Its own
# (Eigen) convolutions ran the discriminator's 4x4 stride-2 convolution and its weight
# gradient ~25% faster on the 2-core AVX2 benchmark machine, and the 64 px step ~8% faster
# (benchmarks/README.md), so the training step keeps YNNPACK for dots and reductions only.
# Reductions must be listed: XLA's own reduce ran BatchNorm's statistics ~8x slower than
# YNNPACK's and summed less accurately (a 65k-element channel sum: relative error 5e-6
# against 1e-7). The same function: only the kernels (and so the rounding) change.
CPU_COMPILER_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
  ),
}


def _probed(options: dict, what: str) -> dict | None:
  """`options` if this backend is the CPU and its XLA accepts them on a tiny function, else
  None (logged): the options are experimental, and a jaxlib that no longer knows one gets
  XLA's defaults, never an error."""
  if jax.default_backend() != "cpu":
    return None
  try:
    jax.jit(jnp.sin, compiler_options=options).lower(1.0).compile()
  except Exception as e:  # noqa: BLE001 - any rejection means: use the defaults.
    logging.info("XLA:CPU %s options %s not applied: %s", what, options, e)
    return None
  return dict(options)


@functools.cache
def compiler_options() -> dict[str, str] | None:
  """`jax.jit(compiler_options=...)` for the training step on this backend (None: none)."""
  return _probed(CPU_COMPILER_OPTIONS, "compiler")


# The initial state is computed once per run, in microseconds, but compiling it with
# LLVM's full optimisation took most of a fresh process's start-up on the CPU (threefry
# and the initialisers of every layer: 23 s for a tiny k = 3 config on the 2-core VM,
# 4 s without LLVM's optimisation passes). Same operations, unoptimised machine code.
OPT_LEVEL = "xla_backend_optimization_level"  # XLA's LLVM optimisation level: 0 or 2 (default)
CPU_INIT_COMPILER_OPTIONS = {OPT_LEVEL: 0}


@functools.cache
def init_compiler_options() -> dict | None:
  """`jax.jit(compiler_options=...)` for `builder.init_state` on this backend (None: none)."""
  return _probed(CPU_INIT_COMPILER_OPTIONS, "init")


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
