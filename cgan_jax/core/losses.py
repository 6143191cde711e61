"""Loss functions of the paper, one small function each.

Conventions (the paper leaves these open; see README "Choices"):
  * The discriminator has k + 1 logits; index i < k means "made by G_i" and index k means
    "real" (the paper's d_{k+1}). Losses are means over the batch.
  * Transfer losses (eq. 3-5): each sample's map is flattened and L2-normalised; then
    `config.graph.transfer_reduction` (`REDUCTIONS`) says how the squared differences
    are reduced over positions:
      'mean' (default) the attention-transfer convention (Zagoruyko & Komodakis, 2017):
             alpha times the MEAN over positions, samples and layers. With alpha = 1000
             this gives losses of order 0.1-1; a layer with fewer positions weighs more.
      'sum'  the literal reading of eq. (4)/(5): the squared difference is SUMMED over
             positions (the squared L2 distance of two unit vectors, in [0, 4]), then
             averaged over samples and layers, so every layer weighs the same. The loss
             is (positions) times the 'mean' one, so alpha is best chosen smaller.
  * The teacher side carries `stop_gradient`, so L_t,s only moves the student G_s.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

_EPS = 1e-12
REDUCTIONS = ("mean", "sum")


def discriminator_loss_per_image(logits: jax.Array, label: int | jax.Array) -> jax.Array:
  """Eq. (1) for each image: [b, k + 1] logits, int label(s) -> [b] cross-entropies."""
  labels = jnp.broadcast_to(jnp.asarray(label, jnp.int32), logits.shape[:1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def generator_adversarial_loss(logits: jax.Array) -> jax.Array:
  """Eq. (2) before its gate: -log d_{k+1}(G_i(z)), the 'real' class, batch mean.

  Args:
    logits: [..., b, k + 1] logits of D on images of G_i.

  Returns:
    Array of shape [...]: one loss per leading index (e.g. per generator).
  """
  return -jax.nn.log_softmax(logits, axis=-1)[..., -1].mean(axis=-1)


def hinge_margin(logits: jax.Array, label: int | jax.Array) -> jax.Array:
  """The multi-class margin l_label - max_{j != label} l_j of [..., n, k + 1] logits."""
  labels = jnp.broadcast_to(jnp.asarray(label, jnp.int32), logits.shape[:-1])
  target = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return target - jnp.max(others, axis=-1)


def hinge_discriminator_loss_per_image(logits: jax.Array, label: int | jax.Array) -> jax.Array:
  """The hinge loss (Lim & Ye 2017; Miyato et al. 2018) for a (k + 1)-class D, per image:
  max(0, 1 - margin) with the multi-class margin (`hinge_margin`, Crammer & Singer). With
  k = 1 the margin of a real image is D(x) = l_real - l_fake and that of a fake one is
  -D(x): exactly the two-class hinge GAN, relu(1 - D(x)) and relu(1 + D(G(z)))."""
  return jax.nn.relu(1.0 - hinge_margin(logits, label))


def hinge_generator_loss(logits: jax.Array) -> jax.Array:
  """The hinge GAN's generator loss, -D(G(z)), with D(x) the margin of the 'real' class
  (`hinge_margin`); [..., b, k + 1] -> [...] batch means."""
  return -hinge_margin(logits, logits.shape[-1] - 1).mean(axis=-1)


@dataclasses.dataclass(frozen=True)
class GanLoss:
  """One adversarial objective for the (k + 1)-class discriminator (`config.train.gan_loss`).

  Attributes:
    discriminator: (logits [n, k + 1], label(s)) -> per-image loss [n] of D, the target
      class being i for images of G_i and k for real images (D minimises its mean).
    generator: logits [..., b, k + 1] of D on images of G_i -> [...] L_D,i before its
      gate (batch means), which G_i minimises.
    description: one line for the README and errors.
  """

  discriminator: Callable[[jax.Array, int | jax.Array], jax.Array]
  generator: Callable[[jax.Array], jax.Array]
  description: str = ""


# The adversarial objectives by name, compare_gan-style: adding one is a pair of functions
# and one `register_gan_loss` call (tests/test_steps.py trains a toy one).
GAN_LOSSES: dict[str, GanLoss] = {}


def register_gan_loss(name: str, loss: GanLoss) -> GanLoss:
  """Adds `loss` as `config.train.gan_loss=name` (a name may be registered once)."""
  if name in GAN_LOSSES and GAN_LOSSES[name] is not loss:
    raise ValueError(f"GAN loss {name!r} is already registered")
  GAN_LOSSES[name] = loss
  return loss


register_gan_loss(
  "softmax",
  GanLoss(
    discriminator_loss_per_image,
    generator_adversarial_loss,
    "the paper's: softmax cross-entropy for D (eq. 1), -log d_{k+1}(G_i(z)) for G_i (eq. 2)",
  ),
)
register_gan_loss(
  "hinge",
  GanLoss(
    hinge_discriminator_loss_per_image,
    hinge_generator_loss,
    "multi-class hinge: relu(1 - margin) for D, -margin of 'real' for G_i (not the paper's)",
  ),
)


def attention_map(features: jax.Array) -> jax.Array:
  """Eq. (3), then flattened and L2-normalised per sample.

  Args:
    features: [..., b, h, w, c] feature map F.

  Returns:
    [..., b, h * w]: Q = mean_c F^2, divided by its L2 norm over positions.
  """
  q = jnp.mean(jnp.square(features.astype(jnp.float32)), axis=-1)
  return normalize_flat(q, 2)


def normalize_flat(x: jax.Array, feature_axes: int) -> jax.Array:
  """Flattens the trailing `feature_axes` axes and L2-normalises each sample.

  Args:
    x: [..., b, *feature_shape] with len(feature_shape) == feature_axes.
    feature_axes: how many trailing axes make one sample's vector.

  Returns:
    [..., b, d] with unit L2 norm over d. An all-zero vector (e.g. the attention map of
    a dead ReLU layer) stays zero and has finite gradients: the norm is taken as
    sqrt(max(sum x^2, eps^2)), whose gradient at zero is 0 rather than sqrt's infinity
    (which made NaN even through a cutoff gate, 0 * NaN). For any vector with a norm
    above eps = 1e-12 the value is exactly x / ||x||.
  """
  flat = x.reshape(*x.shape[: x.ndim - feature_axes], -1).astype(jnp.float32)
  norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(flat), axis=-1, keepdims=True), _EPS**2))
  return flat / norm


def image_representation(images: jax.Array) -> jax.Array:
  """The compared quantity of eq. (5): [..., b, h, w, c] -> normalised [..., b, h*w*c]."""
  return normalize_flat(images, 3)


def squared_difference(student: jax.Array, teacher: jax.Array, reduction: str) -> jax.Array:
  """(student - teacher)^2 of [b, d] representations, reduced to a scalar.

  'mean': mean over samples and positions; 'sum': sum over positions, mean over samples.
  """
  sq = jnp.square(student - teacher)
  if reduction == "mean":
    return jnp.mean(sq)
  if reduction == "sum":
    return jnp.mean(jnp.sum(sq, axis=-1))
  raise ValueError(f"transfer_reduction={reduction!r} must be one of {REDUCTIONS}")


def pairwise_transfer_losses(
  reps: list[jax.Array], alpha: jax.Array | float, reduction: str = "mean"
) -> jax.Array:
  """Eq. (4)/(5) for every ordered pair (teacher t, student s).

  Args:
    reps: list over the M compared layers of normalised maps, each [k, b, d].
    alpha: the loss scale.
    reduction: 'mean' or 'sum' over positions (see the module docstring).

  Returns:
    [k, k] float32, entry [t, s] = alpha * mean_m of `squared_difference(rep_s,
    stop_gradient(rep_t), reduction)`. The diagonal is zero.
  """
  k = reps[0].shape[0]
  entries = {}
  for t in range(k):
    for s in range(k):
      if s != t:
        # One fused reduction per ordered pair. (Broadcasting to [k, k, b, d] made the
        # backward a dot with a ones matrix that took a third of the 64 px CPU step.)
        entries[t, s] = jnp.mean(
          jnp.stack(
            [squared_difference(rep[s], jax.lax.stop_gradient(rep[t]), reduction) for rep in reps]
          )
        )
  zero = jnp.zeros((), jnp.float32)
  rows = [jnp.stack([entries.get((t, s), zero) for s in range(k)]) for t in range(k)]
  return alpha * jnp.stack(rows)


def gated_generator_losses(
  adv: jax.Array, transfer: jax.Array, w_d: jax.Array, w_t: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Each generator's loss: Gate(L_D,i) + sum_{t != i} Gate(L_t,i).

  Args:
    adv: [k] ungated L_D,i.
    transfer: [k, k] ungated L_t,s (teacher, student).
    w_d: [k] gate weights of the adversarial edges.
    w_t: [k, k] gate weights of the transfer edges (the diagonal is ignored).

  Returns:
    (total [k], gated transfer part [k]) per generator.
  """
  k = adv.shape[0]
  off_diag = 1.0 - jnp.eye(k, dtype=transfer.dtype)
  gated_transfer = jnp.sum(w_t * transfer * off_diag, axis=0)
  return w_d * adv + gated_transfer, gated_transfer
