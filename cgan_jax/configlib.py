"""Config validation: every user mistake becomes one `ConfigError` line, before compiling.

Methods are configs of one code path (paper, Tables 1 and 3):

  method      k     discriminator   transfer
  dcgan       1     BatchNorm       none
  dcgan_sn    1     spectral norm   none
  madgan      >= 2  spectral norm   none       (MAD-GAN, Ghosh et al. 2018)
  proposed    >= 2  spectral norm   image | feature_input_side | feature_output_side
"""

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from typing import Any

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
# How a population's members are mapped in its step (`run.population`).
MEMBER_MAPS = ("auto", "vmap", "unroll", "sequential")


# ---------------------------------------------------------------------------------------
# The table of config fields: what each one is to the program.

REQUIRED = object()  # a field every config has had from the start: no default


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field.

  Attributes:
    path: its dotted name under `config.`.
    default: its value in configs older than the field (`REQUIRED`: none).
    compile: None, or what it fixes of the compiled programs: 'init' (the initial state's
      shapes and code, and the step's: `builder.init_structure_key`) or 'step' (the
      step's only: `builder.structure_key`). Two configs with the same key share one
      compiled step, so a field that changes the step must say so here.
    resume: a workdir's run may not change it on a resume (it changes what the workdir
      holds, or what its steps so far mean): `train.check_workdir` refuses the change.
      Other changes are allowed, logged and kept in `config_history.jsonl`.
    member: population members may differ in it (a traced step input, or the seed):
      `population.check_members`.
    choices: its allowed values, or a function returning them (a registry's keys);
      `validate_config` checks them.
    key: what the structure key takes from the config (default: the value), e.g. only
      whether the EMA decay is > 0.
    example: a value other than the base config's that changes the compiled step, for
      tests/test_builder.py (default: another of `choices`).
  """

  path: str
  default: Any = REQUIRED
  compile: str | None = None
  resume: bool = False
  member: bool = False
  choices: tuple | Callable[[], tuple] | None = None
  key: Callable[[Any], Any] | None = None
  example: Any = None

  def allowed(self) -> tuple | None:
    return self.choices() if callable(self.choices) else self.choices


def _registry(table: Callable[[], dict]) -> Callable[[], tuple]:
  return lambda: tuple(table())


FIELDS: tuple[Field, ...] = (
  Field("method", compile="init", resume=True, choices=METHODS, key=lambda c: d_norm(c)),
  Field("seed", member=True),
  Field("num_epochs"),
  Field("dtype", compile="init", choices=DTYPES, example="bfloat16"),
  Field("model.k", compile="init", resume=True, example=3),
  Field("model.z_dim", compile="init", resume=True, example=64),
  Field("model.g_width", compile="init", resume=True, example=8),
  Field("model.d_width", compile="init", resume=True, example=8),
  Field(
    "model.ema_decay",
    compile="init",
    resume=True,
    member=True,
    key=lambda c: float(c.model.ema_decay) > 0,
    example=0.9,
  ),
  Field("model.init", default="lecun", compile="init", choices=_registry(lambda: models.INITS)),
  Field(
    "model.conv_impl",
    default="phase",
    compile="init",
    choices=_registry(lambda: dict.fromkeys(models.CONV_IMPLS)),
  ),
  Field(
    "data.image_size",
    compile="init",
    resume=True,
    choices=_registry(lambda: dict.fromkeys(models.SUPPORTED_IMAGE_SIZES)),
  ),
  Field("data.source", choices=DATA_SOURCES),
  Field("data.num_train", resume=True),
  Field("data.path", default=""),
  Field("data.tfds_dir", default=""),
  Field("data.prefetch", default=2),
  Field(
    "graph.transfer",
    compile="init",
    resume=True,
    choices=_registry(lambda: dict.fromkeys(graph_lib.transfer_methods())),
    example="feature_output_side",
  ),
  Field(
    "graph.transfer_reduction",
    default="mean",
    compile="init",
    resume=True,
    choices=losses.REDUCTIONS,
  ),
  Field("graph.gates_d", member=True),
  Field("graph.gates_transfer", member=True),
  Field("graph.alpha", member=True),
  Field("graph.progress", member=True, choices=gates_lib.PROGRESS_MODES),
  Field("optim.g_lr", member=True),
  Field("optim.d_lr", member=True),
  Field("optim.b1", compile="init", key=lambda c: float(c.optim.b1), example=0.0),
  Field("optim.b2", compile="init", key=lambda c: float(c.optim.b2), example=0.99),
  Field("train.batch_size", compile="step", resume=True, example=16),
  Field(
    "train.d_update",
    compile="init",
    resume=True,
    choices=_registry(lambda: steps.D_UPDATES),
  ),
  Field(
    "train.gan_loss",
    default="softmax",
    compile="init",
    resume=True,
    choices=_registry(lambda: losses.GAN_LOSSES),
  ),
  Field("train.gen_devices", default=1, compile="step", example=2),
  Field(
    "train.gen_map",
    default="auto",
    compile="init",
    choices=GEN_MAPS,
    key=lambda c: unroll_generators(c),
    example="vmap",  # on the CPU 'auto' unrolls
  ),
  Field("train.log_every_steps"),
  Field("eval.enabled"),
  Field("eval.every_epochs"),
  Field("eval.batch_size"),
  Field("eval.num_samples"),
  Field("eval.final_num_samples"),
  Field("eval.num_grid"),
  Field("eval.num_reference", default=0),
  Field("eval.inception_weights", default="auto"),
  Field("eval.metrics", default="auto"),
  Field("eval.select", default="auto"),
  Field("checkpoint.every_epochs"),
  Field("checkpoint.keep"),
  Field("population.seeds", default="", member=True),
  Field("population.member_map", default="auto", member=True, choices=MEMBER_MAPS),
  Field("population.memory_limit_gb", default=0.0, member=True),
)
FIELDS_BY_PATH: dict[str, Field] = {f.path: f for f in FIELDS}


def get(config, path: str):
  """config.<path>, or the table's default for a config older than the field (None for a
  field outside the table that the config lacks)."""
  node = config
  for part in path.split("."):
    if not hasattr(node, "get") or part not in node:
      f = FIELDS_BY_PATH.get(path)
      return None if f is None or f.default is REQUIRED else f.default
    node = node[part]
  return node


def flatten(config, skip=()) -> dict:
  """A config (or its saved JSON: nested dicts) as {dotted field: value}, leaves only;
  names in `skip` (a field or a whole section) are left out."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if name in skip:
        continue
      if hasattr(value, "items"):
        walk(name + ".", value)
      else:
        out[name] = value

  walk("", config)
  return out


def key_value(config, field: Field):
  """What the structure key takes from `config` for `field`."""
  return field.key(config) if field.key is not None else get(config, field.path)


def compile_fields(which: str) -> tuple[Field, ...]:
  """The fields that fix the initial state ('init') or the step ('step': the 'init' ones
  too)."""
  kinds = ("init",) if which == "init" else ("init", "step")
  return tuple(f for f in FIELDS if f.compile in kinds)


RESUME_FIELDS = tuple(f.path for f in FIELDS if f.resume)
MEMBER_FIELDS = tuple(f.path for f in FIELDS if f.member)


def _check_choices(config) -> None:
  for f in FIELDS:
    allowed = f.allowed()
    if allowed is not None:
      value = get(config, f.path)
      if value not in allowed:
        raise choice_error(f"config.{f.path}", value, tuple(allowed))


def gan_loss(config) -> str:
  """The adversarial objective (`losses.GAN_LOSSES`; 'softmax', the paper's, in configs
  older than the field)."""
  return get(config, "train.gan_loss")


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
  _check_choices(config)
  k = config.model.k
  _check_int("config.model.k", k, 1)
  _check_int("config.model.z_dim", config.model.z_dim, 1)
  _check_int("config.model.g_width", config.model.g_width, 1)
  _check_int("config.model.d_width", config.model.d_width, 1)
  ema = config.model.ema_decay
  if not isinstance(ema, int | float) or not 0.0 <= ema < 1.0:
    raise ConfigError(f"config.model.ema_decay={ema!r} must be in [0, 1) (0 turns EMA off)")
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
  for name in ("g_lr", "d_lr"):
    _check_positive(f"config.optim.{name}", config.optim[name])
  for name in ("b1", "b2"):
    b = config.optim[name]
    if not isinstance(b, int | float) or not 0.0 <= b < 1.0:
      raise ConfigError(f"config.optim.{name}={b!r} must be in [0, 1)")
  _validate_graph(config)
  _validate_eval(config)
  _validate_population(config)


def population_field(config, name: str, default):
  """config.population.<name>, or `default` in configs older than the field."""
  value = get(config, f"population.{name}")
  return default if value is None else value


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
  return get(config, "eval.select")


def eval_metrics(config) -> str:
  """config.eval.metrics ('auto' in configs older than the field): the metrics of the
  registry (`cgan_jax.quality.registry`) computed at each evaluation of training."""
  value = get(config, "eval.metrics")
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
  return get(config, "graph.transfer_reduction")


def conv_impl(config) -> str:
  """How the 4x4 layers are computed (`models.CONV_IMPLS`; 'phase' in configs older than it)."""
  return get(config, "model.conv_impl")


def init_scheme(config) -> str:
  """Parameter initialisation (`models.INITS`); 'lecun' (Flax's default, what earlier
  versions used) in configs older than the field."""
  return get(config, "model.init")


def gen_devices(config) -> int:
  """Width of the mesh's 'gen' axis (1 in configs older than it)."""
  return get(config, "train.gen_devices")


def gen_map(config) -> str:
  """How the step applies the k generators (`GEN_MAPS`; 'auto' in configs older than it)."""
  return get(config, "train.gen_map")


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
