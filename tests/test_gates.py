"""Gate schedules: values, jit, per-epoch and per-step progress."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgan_jax.core import gates

from . import edge_losses

ALL = jnp.arange(4)  # through, cutoff, positive_linear, negative_linear


@pytest.mark.parametrize(
  "epoch,want",
  [
    (0, [1.0, 0.0, 0.0, 1.0]),
    (5, [1.0, 0.0, 0.5, 0.5]),  # middle of E = 11 epochs
    (10, [1.0, 0.0, 1.0, 0.0]),
  ],
)
def test_gate_values_per_epoch(epoch, want):
  progress_fn = edge_losses.make_progress_fn(num_epochs=11, steps_per_epoch=7, mode="epoch")
  for step in range(epoch * 7, epoch * 7 + 7):  # constant over the whole epoch
    np.testing.assert_allclose(gates.gate_weights(ALL, progress_fn(step)), want, atol=1e-7)


def test_gate_values_paper_formula():
  """positive = e/(E-1), negative = 1 - e/(E-1) for every epoch."""
  e_total = 200
  progress_fn = edge_losses.make_progress_fn(num_epochs=e_total, steps_per_epoch=3, mode="epoch")
  for e in [0, 1, 57, 100, 199]:
    w = gates.gate_weights(ALL, progress_fn(3 * e + 2))
    np.testing.assert_allclose(w, [1, 0, e / (e_total - 1), 1 - e / (e_total - 1)], atol=1e-6)


def test_gate_values_per_step():
  progress_fn = edge_losses.make_progress_fn(num_epochs=2, steps_per_epoch=5, mode="step")
  np.testing.assert_allclose(gates.gate_weights(ALL, progress_fn(0)), [1, 0, 0, 1])
  np.testing.assert_allclose(
    gates.gate_weights(ALL, progress_fn(3)), [1, 0, 3 / 9, 6 / 9], rtol=1e-6
  )
  np.testing.assert_allclose(gates.gate_weights(ALL, progress_fn(9)), [1, 0, 1, 0])


def test_jit_gate_equals_gate():
  progress_fn = edge_losses.make_progress_fn(num_epochs=9, steps_per_epoch=4, mode="epoch")
  ids = jnp.array([[0, 2], [3, 1]])

  @jax.jit
  def jitted(ids, step):
    return gates.gate_weights(ids, progress_fn(step))

  for step in [0, 5, 17, 35]:
    np.testing.assert_array_equal(jitted(ids, step), gates.gate_weights(ids, progress_fn(step)))


def test_single_epoch_progress_is_zero():
  progress_fn = edge_losses.make_progress_fn(num_epochs=1, steps_per_epoch=4, mode="epoch")
  assert float(progress_fn(3)) == 0.0
