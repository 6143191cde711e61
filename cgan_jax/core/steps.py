"""The training step as small pure functions: discriminator phase, generator phase, transfer.

    train_step(spec, state, real, hparams) -> (state, metrics)
      = discriminator_phase(spec, state, real, d_key, hparams)      (paper 3.3.1)
      + generator_phase(spec, state, b, g_key, hparams, progress)   (paper 3.3.2)
          which uses transfer_matrix(spec, images, feats, alpha)   (eq. 3-5)

`StepSpec` is the static part, built once per structure from a config (`run.builder`):
the modules, the optimizers and the few names and sizes that change shapes or code.
`StepHparams` is the traced part: gates, alpha, learning rates, EMA decay and the gate
schedule. Two runs that differ only in StepHparams (or in the seed) share one compiled
step.

Discriminator, `config.train.d_update` (`D_UPDATES`, a registry):
  'paper'  for i = 0..k-1: one D update on the real batch (target class k), then one D
           update on a batch of G_i (target class i) made from G_i's own z; 2k optimizer
           steps of D per training step, unrolled over i.
  'joint'  one D update on the real batch plus all k fake batches (one softmax
           cross-entropy averaged over the (k + 1) * b images).

Generators (paper 3.3.2): all k get the SAME z; generator i minimises
Gate(L_D,i) + sum_{t != i} Gate(L_t,i). Because every teacher side carries
stop_gradient, the gradient of the sum over generators with respect to the stacked
parameters is, per generator, the gradient of its own loss; one vmapped optimizer update
applies them all.

Choices the paper leaves open:
  * Generators run in training mode (BatchNorm batch statistics) whenever they generate
    for training. Their running statistics are recorded only in the generator update.
  * D's spectral-norm vectors (or, for the BatchNorm baseline, its running statistics)
    are updated only in D's own update. In the generator update the BatchNorm baseline D
    normalises with batch statistics (as PyTorch's DCGAN, whose D stays in train mode).
  * The optimizers are built with a unit learning rate and their updates scaled by the
    traced `StepHparams.g_lr` / `d_lr`: the same numbers (and optimizer state) as
    `optax.adam(lr)`, without the learning rate being baked into the compiled step.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cgan_jax.core import gates as gates_lib
from cgan_jax.core import graph as graph_lib
from cgan_jax.core import losses, models
from cgan_jax.core.state import GANState

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The static part of a step (`run.builder.step_spec` builds it from a config).

  Attributes:
    generator, discriminator: the modules.
    tx_g, tx_d: optimizers with a unit learning rate (see the module docstring); tx_g is
      applied per generator through vmap.
    k: number of generators.
    z_dim: latent size.
    transfer: a key of `graph.TRANSFERS`.
    transfer_reduction: 'mean' or 'sum' (`losses.REDUCTIONS`).
    d_update: a key of `D_UPDATES`.
    gan_loss: a key of `losses.GAN_LOSSES` (the adversarial objective of D and the G_i).
    ema: whether the state keeps an EMA of the generators.
    unroll: apply the k generators one by one (a Python loop) instead of `jax.vmap`.
  """

  generator: models.Generator
  discriminator: models.Discriminator
  tx_g: optax.GradientTransformation
  tx_d: optax.GradientTransformation
  k: int
  z_dim: int
  transfer: str = "none"
  transfer_reduction: str = "mean"
  d_update: str = "paper"
  gan_loss: str = "softmax"
  ema: bool = False
  unroll: bool = False


@flax.struct.dataclass
class StepHparams:
  """The traced part of a step: changing any of it never recompiles.

  Attributes:
    graph: gate choices and alpha (`graph.GraphArrays`).
    g_lr, d_lr: float32 [], Adam learning rates.
    ema_decay: float32 [], used when the spec has `ema`.
    num_epochs, steps_per_epoch: int32 [], the gates' schedule (`gates.progress`).
    progress_by_step: bool [], `config.graph.progress == 'step'`.
  """

  graph: graph_lib.GraphArrays
  g_lr: jax.Array
  d_lr: jax.Array
  ema_decay: jax.Array
  num_epochs: jax.Array
  steps_per_epoch: jax.Array
  progress_by_step: jax.Array

  def progress(self, step: jax.Array) -> jax.Array:
    return gates_lib.progress(
      step,
      num_epochs=self.num_epochs,
      steps_per_epoch=self.steps_per_epoch,
      by_step=self.progress_by_step,
    )


def _generator_slice(stacked, i: int):
  """Generator i's slice of a pytree whose leaves are stacked [k, ...]."""
  return jax.tree.map(lambda a: a[i], stacked)


def map_generators(spec: StepSpec, fn, per_generator):
  """fn(*args_i) for each generator i; per_generator: a tuple of [k, ...] pytrees.

  Either `jax.vmap` or a Python loop over i (`spec.unroll`): the same numbers either
  way. On CPU the loop measured faster: the k generators' ops are independent thunks that
  XLA runs side by side, and each matmul is a plain 2-D one.
  """
  if not spec.unroll:
    return jax.vmap(fn)(*per_generator)
  outs = [fn(*_generator_slice(per_generator, i)) for i in range(spec.k)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def apply_updates(tx, grads, opt_state, params, lr):
  """One optimizer step of a unit-learning-rate `tx`, scaled by the traced `lr`."""
  updates, opt_state = tx.update(grads, opt_state, params)
  updates = jax.tree.map(lambda u: lr * u, updates)
  return optax.apply_updates(params, updates), opt_state


# ---------------------------------------------------------------------------------------
# The discriminator phase.


def generate_train(spec: StepSpec, params, batch_stats, z):
  """One generator in training mode -> (image, features, new batch_stats)."""
  (image, feats), upd = spec.generator.apply(
    {"params": params, "batch_stats": batch_stats}, z, train=True, mutable=["batch_stats"]
  )
  return image, feats, upd["batch_stats"]


def fake_batch(spec: StepSpec, g_params, g_stats, key, b):
  """b images of one generator from its own z, as D's input (no gradient to G)."""
  z = jax.random.normal(key, (b, spec.z_dim), jnp.float32)
  image, _, _ = generate_train(spec, g_params, g_stats, z)
  return jax.lax.stop_gradient(image)


def d_update(spec: StepSpec, d, images, labels, lr):
  """One optimizer step of D on eq. (1).

  Args:
    d: (params, state, opt_state) of D.
    images: [n, s, s, 3]; labels: int32 [n].

  Returns:
    (new d triple, per-image cross-entropy [n], hits [n]).
  """
  d_params, d_state, d_opt = d

  def loss_fn(p):
    logits, new_state = spec.discriminator.apply(
      {"params": p, **d_state}, images, train=True, mutable=list(d_state)
    )
    per_image = losses.GAN_LOSSES[spec.gan_loss].discriminator(logits, labels)
    return per_image.mean(), (dict(new_state), per_image, jnp.argmax(logits, -1) == labels)

  (_, (new_state, per_image, hits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
  d_params, d_opt = apply_updates(spec.tx_d, grads, d_opt, d_params, lr)
  return (d_params, new_state, d_opt), per_image, hits


def paper_d_updates(spec: StepSpec, state: GANState, real, key, lr):
  """'paper': for each i, a D update on the real batch, then one on G_i's batch.

  A Python loop, not lax.scan: inside an XLA:CPU while loop the same D update and G
  forward run ~25x slower (measured, benchmarks/README.md), and k is small.

  Returns:
    (d triple, (loss_real, loss_fake, hits_real, hits_fake), each [k, b]).
  """
  b = real.shape[0]
  real_labels = jnp.full((b,), spec.k, jnp.int32)
  fake_keys = jax.random.split(key, spec.k)
  d = (state.d_params, state.d_state, state.d_opt_state)
  outs = []
  for i in range(spec.k):
    g_params_i, g_stats_i = _generator_slice((state.g_params, state.g_batch_stats), i)
    d, loss_r, hit_r = d_update(spec, d, real, real_labels, lr)
    fake = fake_batch(spec, g_params_i, g_stats_i, fake_keys[i], b)
    d, loss_f, hit_f = d_update(spec, d, fake, jnp.full((b,), i, jnp.int32), lr)
    outs.append((loss_r, loss_f, hit_r, hit_f))
  return d, tuple(jnp.stack(o) for o in zip(*outs, strict=True))


def joint_d_update(spec: StepSpec, state: GANState, real, key, lr):
  """'joint': one D update on the real batch plus all k fake batches.

  Returns:
    (d triple, (loss_real [b], loss_fake [k b], hits_real [b], hits_fake [k b])).
  """
  b, k = real.shape[0], spec.k
  fakes = map_generators(
    spec,
    lambda p, s, kk: fake_batch(spec, p, s, kk, b),
    (state.g_params, state.g_batch_stats, jax.random.split(key, k)),
  )  # [k, b, s, s, 3]
  images = jnp.concatenate([real, fakes.reshape(k * b, *real.shape[1:])])
  labels = jnp.concatenate(
    [jnp.full((b,), k, jnp.int32), jnp.repeat(jnp.arange(k, dtype=jnp.int32), b)]
  )
  d = (state.d_params, state.d_state, state.d_opt_state)
  d, loss, hits = d_update(spec, d, images, labels, lr)
  return d, (loss[:b], loss[b:], hits[:b], hits[b:])


# The discriminator update modes by name (`config.train.d_update`): fn(spec, state, real,
# key, lr) -> (d triple, (loss_real, loss_fake, hits_real, hits_fake)).
D_UPDATES: dict[str, Callable] = {"paper": paper_d_updates, "joint": joint_d_update}


def discriminator_phase(
  spec: StepSpec, state: GANState, real, key, hparams: StepHparams
) -> tuple[GANState, Metrics]:
  """D's update(s) of one step (`D_UPDATES[spec.d_update]`) and their metrics."""
  d, (loss_r, loss_f, acc_r, acc_f) = D_UPDATES[spec.d_update](spec, state, real, key, hparams.d_lr)
  metrics = {
    "d_loss_real": loss_r.mean(),
    "d_loss_fake": loss_f.mean(),
    "d_acc_real": acc_r.mean(),
    "d_acc_fake": acc_f.mean(),
  }
  metrics["d_loss"] = metrics["d_loss_real"] + metrics["d_loss_fake"]
  d_params, d_state, d_opt = d
  return state.replace(d_params=d_params, d_state=d_state, d_opt_state=d_opt), metrics


# ---------------------------------------------------------------------------------------
# The generator phase.


def transfer_matrix(spec: StepSpec, images, feats, alpha) -> jax.Array:
  """[k, k] ungated L_t,s (teacher t, student s) from the stacked generator outputs.

  Args:
    images: [k, b, s, s, 3]; feats: the generators' layers, each [k, b, h, w, c].
    alpha: the loss scale.
  """
  represent = graph_lib.TRANSFERS[spec.transfer].represent
  if represent is None or spec.k == 1:
    return jnp.zeros((spec.k, spec.k), jnp.float32)
  return losses.pairwise_transfer_losses(represent(images, feats), alpha, spec.transfer_reduction)


def d_logits(spec: StepSpec, d_params, d_state, x):
  """D's logits without touching its state (used in the generator update)."""
  variables = {"params": d_params, **d_state}
  if spec.discriminator.norm == "batch":
    logits, _ = spec.discriminator.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits
  return spec.discriminator.apply(variables, x, train=False)


def generator_loss(spec: StepSpec, g_params, state: GANState, z, w_d, w_t, alpha):
  """Sum over generators of Gate(L_D,i) + sum_t Gate(L_t,i), with what the step logs.

  Returns:
    (scalar, (new batch_stats, adv [k], gated transfer [k], total [k])).
  """
  images, feats, new_stats = map_generators(
    spec, lambda p, s: generate_train(spec, p, s, z), (g_params, state.g_batch_stats)
  )
  logits = jax.vmap(lambda x: d_logits(spec, state.d_params, state.d_state, x))(images)
  adv = losses.GAN_LOSSES[spec.gan_loss].generator(logits)  # [k]
  trans = transfer_matrix(spec, images, feats, alpha)  # [k, k]
  total, gated_t = losses.gated_generator_losses(adv, trans, w_d, w_t)
  return total.sum(), (new_stats, adv, gated_t, total)


def generator_phase(
  spec: StepSpec, state: GANState, b: int, key, hparams: StepHparams, progress
) -> tuple[GANState, Metrics]:
  """One vmapped Adam update of all k generators from one shared z."""
  z = jax.random.normal(key, (b, spec.z_dim), jnp.float32)  # the same z for every generator
  w_d = gates_lib.gate_weights(hparams.graph.gates_d, progress)
  w_t = gates_lib.gate_weights(hparams.graph.gates_transfer, progress)
  grads, (new_stats, adv, gated_t, total) = jax.grad(
    lambda p: generator_loss(spec, p, state, z, w_d, w_t, hparams.graph.alpha), has_aux=True
  )(state.g_params)
  g_params, g_opt = jax.vmap(lambda g, o, p: apply_updates(spec.tx_g, g, o, p, hparams.g_lr))(
    grads, state.g_opt_state, state.g_params
  )
  g_ema = state.g_ema
  if spec.ema:
    decay = hparams.ema_decay
    g_ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, g_ema, g_params)
  state = state.replace(g_params=g_params, g_batch_stats=new_stats, g_opt_state=g_opt, g_ema=g_ema)
  metrics = {
    "g_adv": adv,
    "g_transfer": gated_t,
    "g_loss": total,
    "gate_d": w_d,
    "gate_transfer": w_t,
  }
  return state, metrics


def train_step(
  spec: StepSpec, state: GANState, real: jax.Array, hparams: StepHparams
) -> tuple[GANState, Metrics]:
  """One training step: D's update(s), then one update of all k generators.

  Args:
    spec: the static part (closed over by `make_train_step`).
    state: the `GANState`.
    real: [b, s, s, 3] real images in [-1, 1].
    hparams: the traced part (`StepHparams`).

  Returns:
    (new state with step + 1, metrics: scalars and per-generator [k] / [k, k] arrays).
  """
  step_key = jax.random.fold_in(state.key, state.step)
  d_key, g_key = jax.random.split(step_key)
  progress = hparams.progress(state.step)
  state, d_metrics = discriminator_phase(spec, state, real, d_key, hparams)
  state, g_metrics = generator_phase(spec, state, real.shape[0], g_key, hparams, progress)
  metrics: dict[str, Any] = {**d_metrics, **g_metrics, "progress": progress}
  return state.replace(step=state.step + 1), metrics


def make_train_step(spec: StepSpec) -> Callable:
  """train_step(state, real, hparams) with `spec` bound; pure, not yet jitted."""

  def step(state: GANState, real: jax.Array, hparams: StepHparams):
    return train_step(spec, state, real, hparams)

  return step
