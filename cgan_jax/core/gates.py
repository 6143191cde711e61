"""Gate functions of the knowledge transfer graph (paper, section 3.2).

A gate weights the loss of one edge over the course of training:

  through          1
  cutoff           0
  positive_linear  p        (cutoff at the start, through at the end)
  negative_linear  1 - p    (through at the start, cutoff at the end)

where p in [0, 1] is the training progress. The paper does not say whether the linear
gates move per epoch or per step. By default (``config.graph.progress='epoch'``) p is the
epoch index e = 0..E-1 divided by E-1, so a gate holds its value for a whole epoch and
reaches exactly 1 (or 0) in the last epoch. With ``'step'`` p = step / (total_steps - 1).
For a single-epoch run (E = 1) p stays 0.

Gate choices are integer arrays (indices into `GATE_NAMES`), and `gate_weights` is a
lookup inside jit, so a new combination of gates never recompiles the training step. The
progress is a function of traced numbers too (`progress`), so neither does a new number
of epochs.
"""

import jax
import jax.numpy as jnp

GATE_NAMES = ("through", "cutoff", "positive_linear", "negative_linear")
THROUGH, CUTOFF, POSITIVE_LINEAR, NEGATIVE_LINEAR = range(len(GATE_NAMES))
PROGRESS_MODES = ("epoch", "step")


def gate_weights(gate_ids: jax.Array, progress: jax.Array) -> jax.Array:
  """Weights of gates at a point of training.

  Args:
    gate_ids: int array of any shape, entries in 0..3 (see `GATE_NAMES`).
    progress: scalar in [0, 1], the training progress.

  Returns:
    float32 array with the shape of `gate_ids`.
  """
  p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  table = jnp.stack([jnp.ones_like(p), jnp.zeros_like(p), p, 1.0 - p])
  return table[jnp.asarray(gate_ids, jnp.int32)]


def progress(step, *, num_epochs, steps_per_epoch, by_step) -> jax.Array:
  """The training progress p in [0, 1] at `step`; every argument may be traced.

  Args:
    step: optimizer steps done.
    num_epochs: E, the number of training epochs.
    steps_per_epoch: optimizer steps per epoch.
    by_step: False: p = e / (E - 1) for epoch e = step // steps_per_epoch ('epoch' mode);
      True: p = step / (E * steps_per_epoch - 1) ('step' mode). p = 0 when the
      denominator would be 0 (one epoch, or one step).

  Returns:
    float32 [].
  """
  step = jnp.asarray(step, jnp.int32)
  num_epochs = jnp.asarray(num_epochs, jnp.int32)
  steps_per_epoch = jnp.asarray(steps_per_epoch, jnp.int32)
  position = jnp.where(by_step, step, step // steps_per_epoch)
  end = jnp.where(by_step, num_epochs * steps_per_epoch, num_epochs) - 1
  p = position.astype(jnp.float32) / jnp.maximum(end, 1).astype(jnp.float32)
  return jnp.where(end > 0, jnp.clip(p, 0.0, 1.0), 0.0)
