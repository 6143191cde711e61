"""Config validation: every user mistake becomes one `ConfigError` line, before compiling.

Methods are configs of one code path (paper, Tables 1 and 3):

  method      k     discriminator   transfer
  dcgan       1     BatchNorm       none
  dcgan_sn    1     spectral norm   none
  madgan      >= 2  spectral norm   none       (MAD-GAN, Ghosh et al. 2018)
  proposed    >= 2  spectral norm   image | feature_input_side | feature_output_side
"""

import importlib.util
import os

import jax
import jax.numpy as jnp

from cgan_jax.core import gates as gates_lib
from cgan_jax.core import graph as graph_lib
from cgan_jax.core import losses, models, steps
from cgan_jax.errors import ConfigError, choice_error

METHODS = ("dcgan", "dcgan_sn", "madgan", "proposed")
DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("tfds", "cifar_archive", "synthetic")
GEN_MAPS = ("auto", "vmap", "unroll")


def d_norm(config) -> str:
  """The discriminator's normalisation implied by the method."""
  return "batch" if config.method == "dcgan" else "spectral"


def _check_int(field: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f"{field}={value!r} must be an integer >= {minimum}")


def _check_positive(field: str, value) -> None:
  if not isinstance(value, int | float) or not value > 0:
    raise ConfigError(f"{field}={value!r} must be a number > 0")


def validate_config(config) -> None:
  """Checks a config; raises `ConfigError` naming the first bad field.

  Args:
    config: an `ml_collections.ConfigDict` as returned by `configs/*.py:get_config`.
  """
  if config.method not in METHODS:
    raise choice_error("config.method", config.method, METHODS)
  k = config.model.k
  _check_int("config.model.k", k, 1)
  _check_int("config.model.z_dim", config.model.z_dim, 1)
  _check_int("config.model.g_width", config.model.g_width, 1)
  _check_int("config.model.d_width", config.model.d_width, 1)
  ema = config.model.ema_decay
  if not isinstance(ema, int | float) or not 0.0 <= ema < 1.0:
    raise ConfigError(f"config.model.ema_decay={ema!r} must be in [0, 1) (0 turns EMA off)")
  if init_scheme(config) not in models.INITS:
    raise choice_error("config.model.init", init_scheme(config), models.INITS)
  impl = conv_impl(config)
  if impl not in models.CONV_IMPLS:
    raise choice_error("config.model.conv_impl", impl, models.CONV_IMPLS)
  if config.data.image_size not in models.SUPPORTED_IMAGE_SIZES:
    raise choice_error(
      "config.data.image_size", config.data.image_size, models.SUPPORTED_IMAGE_SIZES
    )
  if config.dtype not in DTYPES:
    raise choice_error("config.dtype", config.dtype, DTYPES)
  if config.data.source not in DATA_SOURCES:
    raise choice_error("config.data.source", config.data.source, DATA_SOURCES)
  _check_int("config.num_epochs", config.num_epochs, 1)
  _check_int("config.train.batch_size", config.train.batch_size, 1)
  _check_int("config.train.log_every_steps", config.train.log_every_steps, 1)
  _check_int("config.data.num_train", config.data.num_train, 0)
  _check_int("config.data.prefetch", config.data.prefetch, 0)
  gen = gen_devices(config)
  _check_int("config.train.gen_devices", gen, 1)
  if k % gen:
    raise ConfigError(
      f"config.train.gen_devices={gen} must divide config.model.k={k} (the generators are "
      "split evenly over the devices)"
    )
  gmap = gen_map(config)
  if gmap not in GEN_MAPS:
    raise choice_error("config.train.gen_map", gmap, GEN_MAPS)
  if config.train.d_update not in steps.D_UPDATES:
    raise choice_error("config.train.d_update", config.train.d_update, tuple(steps.D_UPDATES))
  for name in ("g_lr", "d_lr"):
    _check_positive(f"config.optim.{name}", config.optim[name])
  for name in ("b1", "b2"):
    b = config.optim[name]
    if not isinstance(b, int | float) or not 0.0 <= b < 1.0:
      raise ConfigError(f"config.optim.{name}={b!r} must be in [0, 1)")
  _validate_graph(config)
  _validate_eval(config)
  _validate_population(config)


# How a population's members are mapped in its step (`run.population`).
MEMBER_MAPS = ("auto", "vmap", "unroll", "sequential")


def population_field(config, name: str, default):
  """config.population.<name>, or `default` in configs older than the field."""
  pop = config.get("population")
  return default if pop is None else pop.get(name, default)


def population_seeds(config) -> list[int]:
  """config.population.seeds ('0,1,2') as [0, 1, 2]; [] when there is no population.

  Raises:
    ConfigError: not comma-separated integers >= 0, or a seed twice.
  """
  field, text = "config.population.seeds", population_field(config, "seeds", "")
  if isinstance(text, int) and not isinstance(text, bool):
    text = str(text)
  if isinstance(text, list | tuple):
    text = ",".join(str(x) for x in text)
  if not isinstance(text, str):
    raise ConfigError(f"{field}={text!r} must be comma-separated integers, e.g. 0,1,2")
  try:
    seeds = [int(p) for p in text.split(",") if p.strip()]
  except ValueError:
    raise ConfigError(f"{field}={text!r} must be comma-separated integers, e.g. 0,1,2") from None
  if any(s < 0 for s in seeds):
    raise ConfigError(f"{field}={text!r}: seeds must be integers >= 0")
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"{field}={text!r} names a seed twice; each member needs its own seed")
  return seeds


def population_member_map(config) -> str:
  """How a population's step maps its members (config.population.member_map):

  vmap        `jax.vmap` over the stacked members: one kernel per operation for all
  unroll      a Python loop over the stacked members inside one jitted step
  sequential  the solo step, once per member (states kept apart): P times one member's
              cost, never more
  auto        vmap on an accelerator with config.model.conv_impl='matmul' (the only
              form measured faster than sequential there: 1.39x member-steps/s at P = 32
              on an H200), else sequential (on 2 CPU cores vmap and unroll cost 2.1-2.4x
              P = 1 at P = 2, and on the H200 the 'phase' convolutions under vmap
              become grouped convolutions, 0.5-0.8x; benchmarks/README.md)
  """
  value = population_field(config, "member_map", "auto")
  if value not in MEMBER_MAPS:
    raise choice_error("config.population.member_map", value, MEMBER_MAPS)
  if value == "auto":
    fast = jax.default_backend() != "cpu" and conv_impl(config) == "matmul"
    return "vmap" if fast else "sequential"
  return value


def _validate_population(config) -> None:
  population_seeds(config)
  population_member_map(config)
  limit = population_field(config, "memory_limit_gb", 0.0)
  if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0:
    raise ConfigError(
      f"config.population.memory_limit_gb={limit!r} must be a number >= 0 (0: the device's)"
    )


# 'auto' and '' try the full weights (cache, then download), then the FID-only weights.
WEIGHT_SOURCES = ("auto", "full", "fid_helper")


def _validate_eval(config) -> None:
  e = config.eval
  _check_int("config.eval.every_epochs", e.every_epochs, 1)
  _check_int("config.eval.batch_size", e.batch_size, 1)
  # IS averages over 10 splits: fewer samples than that cannot be scored.
  _check_int("config.eval.num_samples", e.num_samples, 10)
  _check_int("config.eval.final_num_samples", e.final_num_samples, 10)
  _check_int("config.eval.num_grid", e.num_grid, 1)
  _check_int("config.eval.num_reference", e.get("num_reference", 0), 0)
  _check_int("config.checkpoint.every_epochs", config.checkpoint.every_epochs, 1)
  _check_int("config.checkpoint.keep", config.checkpoint.keep, 1)
  parse_select(eval_select(config))
  from cgan_jax.quality import registry

  registry.parse(eval_metrics(config), "config.eval.metrics")  # logits: checked with the weights
  w = e.inception_weights
  if not isinstance(w, str):
    raise ConfigError(f"config.eval.inception_weights={w!r} must be a string")
  if w and w not in WEIGHT_SOURCES and not os.path.isfile(os.path.expanduser(w)):
    raise ConfigError(
      f"config.eval.inception_weights={w!r} is not a file; use a path to "
      f"pt_inception-2015-12-05-6726825d.pth (or a TorchScript .pt / converted .npz), or one "
      f"of: {', '.join(WEIGHT_SOURCES)}"
    )


SELECT_MODES = ("max", "min")


def eval_select(config) -> str:
  """config.eval.select ('auto' in configs older than the field)."""
  return config.eval.get("select", "auto")


def eval_metrics(config) -> str:
  """config.eval.metrics ('auto' in configs older than the field): the metrics of the
  registry (`cgan_jax.quality.registry`) computed at each evaluation of training."""
  value = config.eval.get("metrics", "auto")
  return ",".join(value) if isinstance(value, list | tuple) else str(value)


def parse_select(text: str) -> tuple[str, str] | None:
  """'metric:mode' or 'metric' (its registry direction) -> (metric, mode); 'auto' -> None
  (chosen once the weights are known). The metric is any of the registry's.

  Raises:
    ConfigError: an unknown metric or mode.
  """
  from cgan_jax.quality import registry  # the registry imports the metrics (and jax)

  field = "config.eval.select"
  if text == "auto":
    return None
  metric, sep, mode = str(text).partition(":")
  if not sep and metric in registry.METRICS:
    mode = registry.METRICS[metric].direction
  allowed = ", ".join(["auto", *(f"{m}[:max|min]" for m in registry.names())])
  if metric not in registry.METRICS or mode not in SELECT_MODES:
    raise ConfigError(f"{field}={text!r} is not allowed; use one of: {allowed}")
  return metric, mode


def _validate_graph(config) -> None:
  g, k, method = config.graph, config.model.k, config.method
  transfers = graph_lib.transfer_methods()
  if g.transfer not in transfers:
    raise choice_error("config.graph.transfer", g.transfer, transfers)
  if transfer_reduction(config) not in losses.REDUCTIONS:
    raise choice_error(
      "config.graph.transfer_reduction", transfer_reduction(config), losses.REDUCTIONS
    )
  if g.progress not in gates_lib.PROGRESS_MODES:
    raise choice_error("config.graph.progress", g.progress, gates_lib.PROGRESS_MODES)
  if not isinstance(g.alpha, int | float) or g.alpha < 0:
    raise ConfigError(f"config.graph.alpha={g.alpha!r} must be a number >= 0 (paper: 1000)")
  if method in ("dcgan", "dcgan_sn") and k != 1:
    raise ConfigError(f"config.model.k={k} is not allowed with method={method!r}; it needs k=1")
  if method in ("madgan", "proposed") and k < 2:
    raise ConfigError(f"config.model.k={k} is not allowed with method={method!r}; it needs k>=2")
  if method != "proposed" and g.transfer != "none":
    raise ConfigError(
      f"config.graph.transfer={g.transfer!r} is not allowed with method={method!r}; "
      "allowed: 'none' (transfer edges belong to method='proposed')"
    )
  if method == "proposed" and g.transfer == "none":
    allowed = [t for t in transfers if t != "none"]
    raise ConfigError(
      f"config.graph.transfer='none' is not allowed with method='proposed'; choose one of: "
      f"{', '.join(allowed)} (or method='madgan' for no transfer)"
    )
  n_layers = models.num_generator_layers(config.data.image_size)
  needed = graph_lib.transfer_layers(g.transfer)
  if needed and max(needed) > n_layers:
    raise ConfigError(
      f"config.graph.transfer={g.transfer!r} uses generator layers {needed}, but a "
      f"{config.data.image_size}px generator has {n_layers} layers; use image_size >= 32"
    )
  graph_lib.parse_gates_d(g.gates_d, k)
  graph_lib.parse_gates_transfer(g.gates_transfer, k)


def transfer_reduction(config) -> str:
  """How eq. (4)/(5) reduce over positions (`losses.REDUCTIONS`; 'mean' in configs older
  than the field)."""
  return config.graph.get("transfer_reduction", "mean")


def conv_impl(config) -> str:
  """How the 4x4 layers are computed (`models.CONV_IMPLS`; 'phase' in configs older than it)."""
  return config.model.get("conv_impl", "phase")


def init_scheme(config) -> str:
  """Parameter initialisation (`models.INITS`); 'lecun' (Flax's default, what earlier
  versions used) in configs older than the field."""
  return config.model.get("init", "lecun")


def gen_devices(config) -> int:
  """Width of the mesh's 'gen' axis (1 in configs older than it)."""
  return config.train.get("gen_devices", 1)


def gen_map(config) -> str:
  """How the step applies the k generators (`GEN_MAPS`; 'auto' in configs older than it)."""
  return config.train.get("gen_map", "auto")


def unroll_generators(config) -> bool:
  """Whether the step applies the k generators one by one instead of through `jax.vmap`.

  config.train.gen_map: 'vmap', 'unroll', or 'auto' (the default, also for configs older
  than the field): unrolled on CPU with gen_devices = 1, where it measured faster, and
  vmapped otherwise, so that a 'gen' mesh axis splits the generators over devices.
  """
  gmap = gen_map(config)
  if gmap == "auto":
    return jax.default_backend() == "cpu" and gen_devices(config) == 1
  return gmap == "unroll"


def compute_dtype(config):
  """The computation dtype (parameters and optimizer state stay float32)."""
  return jnp.dtype(config.dtype)


def load_sibling(config_file: str, spec: str):
  """Loads `spec` ('name.py[:variants]') from the folder of `config_file`: how a config
  file builds on another (configs/search.py and cifar32_cpu.py on cifar64.py)."""
  return load_config(os.path.join(os.path.dirname(os.path.abspath(config_file)), spec))


def load_config(spec: str):
  """Loads `path/to/config.py[:variants]` the way `--config=` does, without flags.

  Raises:
    ConfigError: the file does not exist or a variant is unknown.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec!r}: no config file at {path!r}")
  module_spec = importlib.util.spec_from_file_location("_cgan_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
