"""4 forced CPU devices give the same training as 1 device on the same global batch.

The check runs in a subprocess because the device count is fixed when JAX starts
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`)."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPT = r"""
import jax, numpy as np
from cgan_jax import parallel
from tests.conftest import build, real_batch, tiny_config

assert jax.device_count() == 4, jax.devices()

def run(config, devices, steps=3):
  mesh = parallel.make_mesh(devices)
  state, step, graph, _ = build(config)
  state = jax.device_put(state, parallel.replicated(mesh))
  graph = jax.device_put(graph, parallel.replicated(mesh))
  step = jax.jit(step)
  for i in range(steps):
    real = jax.device_put(real_batch(config, seed=10 + i), parallel.data_sharding(mesh))
    assert len(real.sharding.device_set) == len(devices)
    state, metrics = step(state, real, graph)
  return jax.device_get(state), jax.device_get(metrics)

CASES = [("proposed", {}), ("dcgan", {}), ("proposed3", {"train__d_update": "joint"})]
for variants, extra in CASES:
  c = tiny_config(variants, **extra)
  one, m1 = run(c, jax.devices()[:1])
  four, m4 = run(c, jax.devices())
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
  print(f"{variants}: 4 devices == 1 device after 3 steps (max |diff| {worst:.2e})")
print("OK")
"""


@pytest.mark.parametrize("n", [4])
def test_four_devices_equal_one_device(n):
  env = {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
    "JAX_PLATFORMS": "cpu",
  }
  r = subprocess.run(
    [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  assert r.stdout.strip().splitlines()[-1] == "OK", r.stdout
