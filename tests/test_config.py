"""Bad input fails up front, before any compilation, with one line naming the field."""

import pytest
from jax import monitoring

from cgan_jax import configlib
from cgan_jax.errors import ConfigError

from .conftest import ROOT, tiny_config

_COMPILES = []
monitoring.register_event_duration_secs_listener(
  lambda name, *a, **kw: (
    _COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
  )
)


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("graph.gates_d", "through,maybe", r"config.graph.gates_d: unknown gate 'maybe'; allowed"),
    ("method", "wgan", r"config.method='wgan' is not allowed; choose one of: 'dcgan'"),
    ("graph.transfer", "logits", r"config.graph.transfer='logits' is not allowed; choose"),
    ("graph.gates_d", "through", r"config.graph.gates_d='through' has 1 gates but model.k=2"),
    ("graph.gates_transfer", "-,through", r"config.graph.gates_transfer=.* must be 2x2"),
    ("model.k", 0, r"config.model.k=0 must be an integer >= 1"),
    ("train.log_every_steps", 0, r"config.train.log_every_steps=0 must be an integer >= 1"),
    ("data.num_train", -5, r"config.data.num_train=-5 must be an integer >= 0"),
    ("data.prefetch", -1, r"config.data.prefetch=-1 must be an integer >= 0"),
    ("population.member_map", "pmap", r"config.population.member_map='pmap' is not allowed"),
    ("data.image_size", 48, r"config.data.image_size=48 is not allowed; choose one of: 16"),
    ("graph.alpha", -1.0, r"config.graph.alpha=-1.0 must be a number >= 0"),
    ("train.d_update", "alternate", r"config.train.d_update='alternate' is not allowed"),
    ("graph.progress", "batch", r"config.graph.progress='batch' is not allowed"),
    ("num_epochs", 0, r"config.num_epochs=0 must be an integer >= 1"),
    ("data.source", "imagenet", r"config.data.source='imagenet' is not allowed"),
    ("dtype", "float16", r"config.dtype='float16' is not allowed"),
    ("model.conv_impl", "fft", r"config.model.conv_impl='fft' is not allowed"),
    ("train.gen_devices", 0, r"config.train.gen_devices=0 must be an integer >= 1"),
    ("train.gen_devices", 3, r"config.train.gen_devices=3 must divide config.model.k=2"),
    ("train.gen_map", "loop", r"config.train.gen_map='loop' is not allowed"),
  ],
)
def test_bad_field_one_line_error_before_compiling(field, value, match):
  c = tiny_config("proposed")
  node = c
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  before = len(_COMPILES)
  with pytest.raises(ConfigError, match=match) as e:
    configlib.validate_config(c)
  assert "\n" not in str(e.value)
  assert len(_COMPILES) == before  # nothing was compiled


def test_method_constraints():
  with pytest.raises(ConfigError, match=r"config.model.k=1 is not allowed with method='madgan'"):
    tiny_config("madgan", model__k=1)
  with pytest.raises(ConfigError, match=r"config.model.k=2 is not allowed with method='dcgan'"):
    tiny_config("dcgan", model__k=2)
  with pytest.raises(ConfigError, match=r"transfer='image' is not allowed with method='madgan'"):
    tiny_config("madgan", graph__transfer="image")
  with pytest.raises(ConfigError, match=r"transfer='feature_output_side' uses generator layers"):
    tiny_config("proposed3", data__image_size=16)


def test_unknown_variant():
  with pytest.raises(ConfigError, match=r"config variant='wgan' is not allowed; choose one of"):
    configlib.load_config(str(ROOT / "configs" / "cifar64.py") + ":wgan")


@pytest.mark.parametrize(
  "variant",
  ["proposed", "proposed3", "madgan", "dcgan", "dcgan_sn", "madgan,smoke", "proposed3,smoke"],
)
def test_all_variants_validate(variant):
  c = configlib.load_config(str(ROOT / "configs" / "cifar64.py") + ":" + variant)
  configlib.validate_config(c)


def test_paper_defaults():
  c = configlib.load_config(str(ROOT / "configs" / "cifar64.py"))
  assert (c.train.batch_size, c.model.z_dim, c.graph.alpha, c.data.image_size) == (
    256,
    100,
    1000.0,
    64,
  )
  assert (c.optim.g_lr, c.optim.b1, c.optim.b2) == (2e-4, 0.5, 0.999)
  assert (c.method, c.model.k, c.graph.transfer) == ("proposed", 2, "image")
