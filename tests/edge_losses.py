"""Single-edge forms of the paper's losses, for the tests' NumPy comparisons.

The package computes every ordered pair at once (`losses.pairwise_transfer_losses`) and
D's loss per image (`losses.discriminator_loss_per_image`); these write eq. (1), (4) and
(5) for one edge from the package's own pieces, as the paper states them.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cgan_jax.core import gates, losses


def discriminator_loss(logits: jax.Array, label: int | jax.Array) -> jax.Array:
  """Eq. (1): cross-entropy of D's softmax with a one-hot target.

  Args:
    logits: [b, k + 1] discriminator logits.
    label: the target class: i for images of G_i, k for real images.

  Returns:
    Scalar, -sum_m t_m log d_m averaged over the batch.
  """
  return losses.discriminator_loss_per_image(logits, label).mean()


def feature_transfer_loss(
  student: list[jax.Array], teacher: list[jax.Array], alpha: float, reduction: str = "mean"
) -> jax.Array:
  """Eq. (4) for one edge: attention transfer over M layers.

  Args:
    student: M feature maps of G_s, each [b, h, w, c].
    teacher: the matching M feature maps of G_t.
    alpha: the loss scale.
    reduction: 'mean' or 'sum' over positions (see `losses`' docstring).

  Returns:
    Scalar loss; the teacher receives no gradient.
  """
  terms = [
    losses.squared_difference(
      losses.attention_map(fs), jax.lax.stop_gradient(losses.attention_map(ft)), reduction
    )
    for fs, ft in zip(student, teacher, strict=True)
  ]
  return alpha * jnp.mean(jnp.stack(terms))


def image_transfer_loss(
  student: jax.Array, teacher: jax.Array, alpha: float, reduction: str = "mean"
) -> jax.Array:
  """Eq. (5) for one edge: transfer of the generated images.

  Args:
    student: [b, h, w, c] images of G_s.
    teacher: [b, h, w, c] images of G_t from the same z.
    alpha: the loss scale.
    reduction: 'mean' or 'sum' over positions (see `losses`' docstring).

  Returns:
    Scalar loss; the teacher receives no gradient.
  """
  teacher_rep = jax.lax.stop_gradient(losses.image_representation(teacher))
  return alpha * losses.squared_difference(
    losses.image_representation(student), teacher_rep, reduction
  )


def make_progress_fn(
  *, num_epochs: int, steps_per_epoch: int, mode: str = "epoch"
) -> Callable[[jax.Array], jax.Array]:
  """Returns progress(step) in [0, 1] for fixed E and steps per epoch (see `progress`).

  Args:
    num_epochs: E, the number of training epochs.
    steps_per_epoch: optimizer steps per epoch.
    mode: 'epoch' (p = e / (E - 1)) or 'step' (p = step / (E * steps_per_epoch - 1)).
  """
  if mode not in gates.PROGRESS_MODES:
    raise ValueError(f"unknown progress mode {mode!r}")
  by_step = mode == "step"
  return lambda step: gates.progress(
    step, num_epochs=num_epochs, steps_per_epoch=steps_per_epoch, by_step=by_step
  )
