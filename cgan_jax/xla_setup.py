"""The low-level setup that `run/` and `quality/` share: the project's cache folder, the
XLA:CPU compiler option sets and JAX's persistent compilation cache.

Neither package owns these: the training step, the initial state and Inception all
compile through them, so they sit below both (`quality/` never imports `run/`).
"""

import functools
import os

import jax
import jax.numpy as jnp
from absl import logging

COMPILE_CACHE_ENV = "CGAN_JAX_COMPILE_CACHE"


def cache_dir() -> str:
  """`$CGAN_JAX_CACHE`, else `$XDG_CACHE_HOME/cgan_jax`, else `~/.cache/cgan_jax`."""
  if os.environ.get("CGAN_JAX_CACHE"):
    return os.environ["CGAN_JAX_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cgan_jax")


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


_cache_enabled = False


def compilation_cache_dir() -> str | None:
  """The persistent compilation cache folder `enable_compilation_cache` uses (None: off)."""
  value = os.environ.get(COMPILE_CACHE_ENV, "")
  if value.lower() in ("off", "0", "none", "false"):
    return None
  return value or os.path.join(cache_dir(), "jax_compile")


def enable_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache (once per process); returns its folder.

  A folder already set through JAX (`jax_compilation_cache_dir`, `JAX_COMPILATION_CACHE_DIR`)
  is kept. Every executable is cached, also those quicker to compile than JAX's default
  threshold of a second (unless `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` is set), so a
  second process skips compiling the training step and `init_state`.
  Under `jax.distributed` each process has its own subfolder, so all processes of a run
  find the cache equally warm and reach their collectives together.
  """
  global _cache_enabled
  current = jax.config.jax_compilation_cache_dir
  if _cache_enabled or current:
    return current
  _cache_enabled = True
  path = compilation_cache_dir()
  if path is None:
    return None
  if jax.distributed.is_initialized():
    # One folder per process of a multi-process run. In a shared folder, a process whose
    # device single-process runs had warmed read its ops back while the others compiled
    # them, and then waited at the first collective past Gloo's 30 s limit.
    path = os.path.join(path, f"process{jax.process_index()}of{jax.process_count()}")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    logging.warning("No persistent compilation cache: cannot create %s (%s).", path, e)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path
