"""4 forced CPU devices give the same training as 1 device on the same global batch, also
with the generators split over the mesh's 'gen' axis.

The check runs in a subprocess because the device count is fixed when JAX starts
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cgan_jax import xla_setup
from cgan_jax.run import parallel

from .conftest import ROOT, build, real_batch, tiny_config

SCRIPT = r"""
import json, sys
import jax, numpy as np
from cgan_jax.run import builder, parallel
from tests.conftest import real_batch, tiny_config

assert jax.device_count() == 4, jax.devices()

def run(config, devices, gen=1, steps=3):
  program = builder.build(config, parallel.make_mesh(devices, gen))
  state = program.init_state(config, jax.random.PRNGKey(0))
  hparams = program.hparams(config, steps_per_epoch=4)
  k = config.model.k
  for i in range(steps):
    real = jax.device_put(real_batch(config, seed=10 + i), program.data_sharding)
    assert len(real.sharding.device_set) == len(devices)
    state, metrics = program.step(state, real, hparams)
    for leaf in jax.tree.leaves((state.g_params, state.g_opt_state, state.g_batch_stats)):
      # Each device holds k / gen of the generators (all k when gen = 1).
      assert leaf.addressable_shards[0].data.shape[0] == k // gen, (leaf.shape, gen)
    d_leaf = jax.tree.leaves(state.d_params)[0]
    assert d_leaf.addressable_shards[0].data.shape == d_leaf.shape  # D is replicated
  return jax.device_get(state), jax.device_get(metrics)

variants, extra, gen = json.loads(sys.argv[1])
c = tiny_config(variants, **extra)
one, m1 = run(c, jax.devices()[:1])
four, m4 = run(c, jax.devices(), gen)
assert int(one.step) == int(four.step) == 3
worst = 0.0
for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
  a, b = np.asarray(a), np.asarray(b)
  if a.dtype.kind == "f":
    # atol: a tenth of one Adam step (lr 2e-4). Adam divides by sqrt(v), so where a
    # gradient is near zero, reduction-order rounding moves a parameter by up to ~1e-5;
    # per-device (not global) BatchNorm statistics would move it by ~lr per step.
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)
    worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
  else:
    np.testing.assert_array_equal(a, b)
np.testing.assert_allclose(m4["d_loss"], m1["d_loss"], rtol=1e-5)
print(f"{variants}, gen={gen}: 4 devices == 1 device after 3 steps (max |diff| {worst:.2e})")
print("OK")
"""


# (variants, config overrides, gen): gen > 1 splits the k generators over the 'gen' axis.
# (proposed, gen=1) is left out: (proposed, gen=2) runs the same config data-parallel too.
# One process per case, so the cases spread over the test workers.
CASES = [
  ("dcgan", {}, 1),
  ("proposed3", {"train__d_update": "joint"}, 1),
  ("proposed", {}, 2),
  ("proposed", {"model__k": 4}, 4),
]


@pytest.mark.parametrize(
  "case", CASES, ids=["dcgan", "proposed3-joint", "proposed-gen2", "proposed-k4-gen4"]
)
def test_four_devices_equal_one_device(case):
  env = {
    **os.environ,
    # keeps the suite's XLA_FLAGS (tests/conftest.py), adds the device count
    "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
    "JAX_PLATFORMS": "cpu",
  }
  r = subprocess.run(
    [sys.executable, "-c", SCRIPT, json.dumps(case)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  assert r.stdout.strip().splitlines()[-1] == "OK", r.stdout


# XLA's default optimisation level, pinned: the suite lowers it in XLA_FLAGS (conftest.py)
# for its other programs; these tests check what a training run compiles.
LEVEL = parallel.OPT_LEVEL


def test_cpu_compiler_options_apply_and_leave_the_step_unchanged():
  """The XLA:CPU option is accepted by this jaxlib and changes only rounding, as does
  compiling without LLVM's optimisation passes (the suite's level 0)."""
  assert jax.default_backend() == "cpu"
  assert parallel.compiler_options() == parallel.CPU_COMPILER_OPTIONS
  c = tiny_config("proposed")
  results = []
  for options in (
    {LEVEL: 2},
    {**parallel.compiler_options(), LEVEL: 2},
    {**parallel.compiler_options(), LEVEL: 0},
  ):
    state, step, graph, _ = build(c)
    state, _ = jax.jit(step, compiler_options=options)(state, real_batch(c), graph)
    results.append(jax.device_get(state))
  for other in results[1:]:
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other), strict=True):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_cpu_compiler_options_keep_batchnorm_statistics_accurate():
  """Channel sums as large as BatchNorm's at 64 px stay as accurate as XLA's defaults.

  XLA:CPU's own reduce (what the options gave before reductions were listed) summed these
  65,536 values per channel with a relative error of ~5e-6; YNNPACK's about 1e-7.
  """
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 32, 32, 16)) + 1.0
  exact = np.asarray(x, np.float64).sum((0, 1, 2))
  for options in ({LEVEL: 2}, {**parallel.compiler_options(), LEVEL: 2}):
    got = jax.jit(lambda x: x.sum((0, 1, 2)), compiler_options=options)(x)
    err = np.abs(np.asarray(got, np.float64) - exact).max() / np.abs(exact).max()
    assert err < 1e-6, (options, err)


def test_unknown_compiler_option_falls_back_to_defaults(monkeypatch):
  # the option sets live in cgan_jax.xla_setup (run/parallel.py re-exports them)
  monkeypatch.setattr(xla_setup, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "1"})
  assert parallel.compiler_options is xla_setup.compiler_options
  parallel.compiler_options.cache_clear()
  try:
    assert parallel.compiler_options() is None
  finally:
    parallel.compiler_options.cache_clear()
