"""The one place a run is put together from a config.

    program = builder.build(config)          # models, optimizers, mesh, shardings, jitted step
    state = program.init_state(config.seed)   # the initial GANState, placed on the mesh
    hparams = program.hparams(config, steps_per_epoch)
    state, metrics = program.step_on_raw(state, uint8_batch, hparams)

`train.train_and_evaluate`, `restore` (reading runs back), the tests and the benchmarks
all build through here, so they run and time exactly the same step.

Compile once per structure: `build` keeps one `Program` per `structure_key` (the
config fields that change shapes or code, the mesh and the compiler options), and the
jitted functions live in the Program. Two runs in one process whose configs differ only
in gates, alpha, seed, number of epochs, learning rates or EMA decay get the same
Program, so the second run compiles nothing: those values are traced inputs
(`steps.StepHparams`, the state's key).

Across processes, JAX's persistent compilation cache keeps compiled executables on disk
(`enable_compilation_cache`): `$CGAN_JAX_COMPILE_CACHE` names its folder (default
`<cache dir>/jax_compile`, i.e. `~/.cache/cgan_jax/jax_compile`; `off` turns it off; a
folder already set through JAX's own `jax_compilation_cache_dir` is kept). It keeps
every executable, however quick to compile, not only those over JAX's default second
(the evaluator's and sampling's small eager ops, the jitted initial state).
"""

import dataclasses
import functools
import threading
from typing import Any

import jax
import numpy as np
import optax

from cgan_jax import configlib
from cgan_jax.core import graph as graph_lib
from cgan_jax.core import models, steps
from cgan_jax.core import state as state_lib
from cgan_jax.run import generate, input_pipeline, parallel
from cgan_jax.xla_setup import (  # noqa: E402, F401 - re-exported (the cache lives there)
  COMPILE_CACHE_ENV,
  compilation_cache_dir,
  enable_compilation_cache,
)


def make_models(config) -> tuple[models.Generator, models.Discriminator]:
  """The generator and discriminator modules of a validated config."""
  dtype = configlib.compute_dtype(config)
  common = dict(
    image_size=config.data.image_size,
    dtype=dtype,
    conv_impl=configlib.conv_impl(config),
    init_scheme=configlib.init_scheme(config),
  )
  generator = models.Generator(width=config.model.g_width, **common)
  discriminator = models.Discriminator(
    k=config.model.k, width=config.model.d_width, norm=configlib.d_norm(config), **common
  )
  return generator, discriminator


def make_optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Adam for G and D (beta1 0.5, beta2 0.999 by default) with a unit learning rate.

  The paper names no optimizer: Adam 2e-4 / 0.5 / 0.999 is our choice, DCGAN's convention
  (README, "Choices where the paper is silent"). The step scales the updates by the traced
  learning rates (`steps.StepHparams`), so the learning rate is not compiled into the step.
  The optimizer state is that of `optax.adam(lr, b1, b2)`, so checkpoints are the same.
  """
  o = config.optim
  return optax.adam(1.0, b1=o.b1, b2=o.b2), optax.adam(1.0, b1=o.b1, b2=o.b2)


def step_spec(config) -> steps.StepSpec:
  """The static part of the step of a validated config."""
  generator, discriminator = make_models(config)
  tx_g, tx_d = make_optimizers(config)
  return steps.StepSpec(
    generator=generator,
    discriminator=discriminator,
    tx_g=tx_g,
    tx_d=tx_d,
    k=config.model.k,
    z_dim=config.model.z_dim,
    transfer=config.graph.transfer,
    transfer_reduction=configlib.transfer_reduction(config),
    d_update=config.train.d_update,
    gan_loss=configlib.gan_loss(config),
    ema=float(config.model.ema_decay) > 0,
    unroll=configlib.unroll_generators(config),
  )


def step_hparams(config, steps_per_epoch: int) -> steps.StepHparams:
  """The traced part of the step of a validated config (host arrays)."""
  return steps.StepHparams(
    graph=graph_lib.graph_arrays_from_config(config),
    g_lr=np.float32(config.optim.g_lr),
    d_lr=np.float32(config.optim.d_lr),
    ema_decay=np.float32(config.model.ema_decay),
    num_epochs=np.int32(config.num_epochs),
    steps_per_epoch=np.int32(steps_per_epoch),
    progress_by_step=np.bool_(config.graph.progress == "step"),
  )


def init_state(config, init_key: jax.Array) -> state_lib.GANState:
  """The initial `GANState` of a validated config from `init_key` (on the host).

  One jitted function per `init_structure_key`, compiled on the CPU without LLVM's
  optimisation passes (`parallel.init_compiler_options`): Flax's eager `init` ran a few
  hundred small ops, each compiled on its own, and took 37 s in a fresh process for a tiny
  k = 3 config on the 2-core VM; jitted with the full passes 23 s; jitted without them 4 s.
  Against the eager init, 9 of 75 leaves differ, by at most 1.2e-7 (the last float bit of
  some N(0, 0.02) draws): the same numbers up to rounding, not bit for bit.
  """
  enable_compilation_cache()
  key = init_structure_key(config)
  with _INIT_LOCK:  # not _LOCK: `build` holds that while it calls `abstract_state`
    fn = _INITS.get(key)
    if fn is None:
      fn = jax.jit(_create_fn(config), compiler_options=parallel.init_compiler_options())
      _INITS[key] = fn
  return fn(init_key)


def _create_fn(config):
  """init_key -> the initial GANState of `config` (pure; jitted by `init_state`)."""
  spec = step_spec(config)
  # create_train_state reads only k, image_size, z_dim and ema_decay > 0 from the config,
  # all part of `init_structure_key`; the rest comes from the modules and optimizers.
  return functools.partial(
    state_lib.create_train_state,
    config=config,
    generator=spec.generator,
    discriminator=spec.discriminator,
    tx_g=spec.tx_g,
    tx_d=spec.tx_d,
  )


_INITS: dict[tuple, Any] = {}
_INIT_LOCK = threading.Lock()


def init_structure_key(config) -> tuple:
  """What fixes the initial state's shapes and code (the config part of `structure_key`):
  the fields of `configlib.FIELDS` marked compile='init'."""
  return tuple((f.path, configlib.key_value(config, f)) for f in configlib.compile_fields("init"))


def structure_key(config, mesh: jax.sharding.Mesh) -> tuple:
  """What fixes the compiled step: the fields of `configlib.FIELDS` marked compile='init'
  or 'step', the mesh and the compiler options.

  Everything else a config holds (gates, alpha, seed, epochs, learning rates, EMA decay,
  data, evaluation, checkpoints) is either a traced input or not part of the step.
  """
  return (
    *((f.path, configlib.key_value(config, f)) for f in configlib.compile_fields("step")),
    ("mesh", tuple(mesh.shape.items()), tuple(d.id for d in mesh.devices.flat)),
    ("compiler_options", tuple(sorted((parallel.compiler_options() or {}).items()))),
  )


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
  """Everything about a run that its structure fixes, with its jitted functions.

  Attributes:
    key: the `structure_key` it was built for.
    spec: the step's static part (`steps.StepSpec`): modules and optimizers.
    mesh: the [data, gen] device mesh.
    state_shardings: shardings of a `GANState` on the mesh.
    step: jitted, sharded step(state, real [b, s, s, 3] in [-1, 1], hparams); the state
      is donated.
    step_on_raw: the same step on a raw uint8 [b, h, w, 3] batch, resized and scaled on
      the device (what training calls).
    generate: jitted generate(g_params, g_batch_stats, z) -> uint8 [k, n, s, s, 3].
    traces: how many times each jitted function was traced (compiled) so far.
  """

  key: tuple
  spec: steps.StepSpec
  mesh: jax.sharding.Mesh
  state_shardings: Any
  step: Any
  step_on_raw: Any
  generate: Any
  traces: dict

  @property
  def generator(self) -> models.Generator:
    return self.spec.generator

  @property
  def discriminator(self) -> models.Discriminator:
    return self.spec.discriminator

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return parallel.replicated(self.mesh)

  @property
  def data_sharding(self) -> jax.sharding.NamedSharding:
    return parallel.data_sharding(self.mesh)

  def init_state(self, config, init_key: jax.Array) -> state_lib.GANState:
    """The initial state of `config` (built for this structure), placed on the mesh."""
    return jax.device_put(init_state(config, init_key), self.state_shardings)

  def hparams(self, config, steps_per_epoch: int) -> steps.StepHparams:
    """The traced step inputs of `config`, replicated on the mesh."""
    return jax.device_put(step_hparams(config, steps_per_epoch), self.replicated)


_PROGRAMS: dict[tuple, Program] = {}
_LOCK = threading.Lock()


def _counted(fn, traces: dict, name: str):
  def wrapped(*args):
    traces[name] = traces.get(name, 0) + 1  # runs only while tracing
    return fn(*args)

  return wrapped


def build(config, mesh: jax.sharding.Mesh | None = None) -> Program:
  """The `Program` of a validated config: built once per `structure_key` per process.

  Args:
    config: a validated config.
    mesh: the device mesh (default: all devices, `config.train.gen_devices` wide 'gen').

  Raises:
    ConfigError: the batch does not split over the mesh, or gen_devices does not divide
      the device count.
  """
  enable_compilation_cache()
  if mesh is None:
    mesh = parallel.make_mesh(gen=configlib.gen_devices(config))
  parallel.check_mesh(config, mesh)
  key = structure_key(config, mesh)
  with _LOCK:
    if key in _PROGRAMS:
      return _PROGRAMS[key]
    spec = step_spec(config)
    shardings = parallel.state_sharding(abstract_state(config), mesh)
    traces: dict[str, int] = {}
    pure = steps.make_train_step(spec)
    size = config.data.image_size

    def on_raw(state, raw, hparams):
      return pure(state, input_pipeline.preprocess(raw, size), hparams)

    program = Program(
      key=key,
      spec=spec,
      mesh=mesh,
      state_shardings=shardings,
      step=parallel.shard_step(_counted(pure, traces, "step"), shardings),
      step_on_raw=parallel.shard_step(_counted(on_raw, traces, "step_on_raw"), shardings),
      generate=generate.make_generate_fn(spec.generator),
      traces=traces,
    )
    _PROGRAMS[key] = program
    return program


def clear_programs() -> None:
  """Forgets every built Program and initial-state function (the next run compiles again)."""
  with _LOCK:
    _PROGRAMS.clear()
  with _INIT_LOCK:
    _INITS.clear()


def abstract_state(config) -> state_lib.GANState:
  """The shapes and dtypes of a config's state, without computing it."""
  return jax.eval_shape(_create_fn(config), jax.random.PRNGKey(0))
