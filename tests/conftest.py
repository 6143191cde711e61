"""Shared helpers: tiny configs that keep the suite fast on a 2-core CPU."""

import os
import pathlib

# The suite's programs are tiny and run a few times each, so compiling them is most of
# their time: compile them without LLVM's optimisation passes (XLA's level 0; about half the
# compile time, test_models 266 s -> 117 s on 2 cores). Inception pins XLA's full level in
# its own options (`evaluator.inception_compiler_options`), so the FID tests keep its speed.
# Subprocesses inherit it. To test at XLA's defaults, set the level yourself, e.g.
# XLA_FLAGS=--xla_backend_optimization_level=2 python -m pytest -q -n auto
O0_FLAG = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {O0_FLAG}".strip()

import jax  # noqa: E402 - after XLA_FLAGS, which XLA reads when the backend starts
import pytest  # noqa: E402

from cgan_jax import configlib  # noqa: E402
from cgan_jax.core import steps  # noqa: E402
from cgan_jax.run import builder  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"


def tiny_config(variants: str = "proposed", **overrides):
  """A validated config: 16px (32px for feature_output_side), width 4, batch 8."""
  c = configlib.load_config(os.fspath(ROOT / "configs" / "cifar64.py") + ":" + variants)
  c.data.image_size = 32 if c.graph.transfer == "feature_output_side" else 16
  c.model.g_width = 4
  c.model.d_width = 4
  c.model.z_dim = 8
  c.train.batch_size = 8
  c.num_epochs = 2
  c.data.source = "synthetic"
  c.data.num_train = 32
  c.eval.enabled = False  # Inception at 299 px is slow on CPU; test_evaluation turns it on
  for path, value in overrides.items():
    node = c
    *parents, leaf = path.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  configlib.validate_config(c)
  return c


# Overrides of `tiny_config` that turn IS/FID on cheaply: the offline FID-only weights,
# 10 / 20 samples per generator, an 18-image reference, 20-image Inception batches (at
# k = 2: one batch per evaluation, two for the final one, one for the reference).
TINY_EVAL = dict(
  eval__enabled=True,
  eval__inception_weights="fid_helper",
  eval__num_samples=10,
  eval__final_num_samples=20,
  eval__batch_size=20,
  eval__num_reference=18,
)


def build(config, seed: int = 0):
  """(state, step (pure, not jitted), hparams, (generator, discriminator)) for a config,
  all from `builder` as training builds them (4 steps per epoch)."""
  spec = builder.step_spec(config)
  state = builder.init_state(config, jax.random.PRNGKey(seed))
  hparams = builder.step_hparams(config, steps_per_epoch=4)
  return state, steps.make_train_step(spec), hparams, (spec.generator, spec.discriminator)


def real_batch(config, seed: int = 1):
  s = config.data.image_size
  shape = (config.train.batch_size, s, s, 3)
  return jax.random.uniform(jax.random.PRNGKey(seed), shape, minval=-1.0, maxval=1.0)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
  """Converted Inception weights and FID statistics go to a per-session cache, never ~.

  The persistent compilation cache is one folder for the whole pytest run, shared by the
  xdist workers and every subprocess they start, so a program compiled once (Inception at
  the tests' batch of 20, a tiny training step) is read back instead of compiled again.
  """
  names = ("CGAN_JAX_CACHE", "CGAN_JAX_COMPILE_CACHE")
  old = {name: os.environ.get(name) for name in names}
  base = tmp_path_factory.getbasetemp()
  run_dir = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  os.environ["CGAN_JAX_CACHE"] = str(tmp_path_factory.mktemp("cgan_jax_cache"))
  os.environ["CGAN_JAX_COMPILE_CACHE"] = str(run_dir / "jax_compile")
  yield
  for name, value in old.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


@pytest.fixture
def cifar_archive():
  if not CIFAR_ARCHIVE.exists():
    pytest.skip(f"real CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
  return CIFAR_ARCHIVE
