"""The jitted training step: discriminator update(s), then one update of all k generators.

Discriminator (paper 3.3.1), `config.train.d_update`:
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
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cgan_jax import configlib
from cgan_jax.core import gates as gates_lib
from cgan_jax.core import graph as graph_lib
from cgan_jax.core import losses
from cgan_jax.core.state import GANState

Metrics = dict[str, jax.Array]


def _generator_slice(stacked, i: int):
  """Generator i's slice of a pytree whose leaves are stacked [k, ...]."""
  return jax.tree.map(lambda a: a[i], stacked)


def make_train_step(
  *,
  generator,
  discriminator,
  tx_g: optax.GradientTransformation,
  tx_d: optax.GradientTransformation,
  config,
  progress_fn: Callable[[jax.Array], jax.Array],
) -> Callable[[GANState, jax.Array, graph_lib.GraphArrays], tuple[GANState, Metrics]]:
  """Builds train_step(state, real, graph) -> (state, metrics); pure, not yet jitted.

  Args:
    generator, discriminator: the modules (see `state.make_models`).
    tx_g, tx_d: optimizers; tx_g is applied per generator through vmap.
    config: a validated config (static: k, z_dim, transfer, d_update, ema_decay).
    progress_fn: step -> training progress in [0, 1] for the gates.

  Returns:
    train_step(state, real [b, s, s, 3] in [-1, 1], graph: GraphArrays). Gate choices
    and alpha are traced inputs, so changing them never recompiles.
  """
  k = config.model.k
  z_dim = config.model.z_dim
  transfer = config.graph.transfer
  layers = graph_lib.transfer_layers(transfer)
  d_update_mode = config.train.d_update
  ema_decay = float(config.model.get("ema_decay", 0.0))
  batch_norm_d = discriminator.norm == "batch"
  unroll = configlib.unroll_generators(config)

  def map_generators(fn, per_generator):
    """fn(*args_i) for each generator i; per_generator: a tuple of [k, ...] pytrees.

    Either `jax.vmap` or a Python loop over i (`config.train.gen_map`): the same numbers
    either way. On CPU the loop measured faster: the k generators' ops are independent
    thunks that XLA runs side by side, and each matmul is a plain 2-D one.
    """
    if not unroll:
      return jax.vmap(fn)(*per_generator)
    outs = [fn(*_generator_slice(per_generator, i)) for i in range(k)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  def g_apply(params, batch_stats, z):
    """One generator in training mode -> (image, features, new batch_stats)."""
    (image, feats), upd = generator.apply(
      {"params": params, "batch_stats": batch_stats}, z, train=True, mutable=["batch_stats"]
    )
    return image, feats, upd["batch_stats"]

  def d_logits(d_params, d_state, x):
    """D's logits without touching its state (used in the generator update)."""
    variables = {"params": d_params, **d_state}
    if batch_norm_d:
      logits, _ = discriminator.apply(variables, x, train=True, mutable=["batch_stats"])
      return logits
    return discriminator.apply(variables, x, train=False)

  def d_update(d_params, d_state, d_opt, images, labels):
    """One optimizer step of D on eq. (1) -> new (params, state, opt), per-image CE, hits."""

    def loss_fn(p):
      logits, new_state = discriminator.apply(
        {"params": p, **d_state}, images, train=True, mutable=list(d_state)
      )
      per_image = losses.discriminator_loss_per_image(logits, labels)
      return per_image.mean(), (dict(new_state), per_image, jnp.argmax(logits, -1) == labels)

    (_, (new_state, per_image, hits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
    updates, d_opt = tx_d.update(grads, d_opt, d_params)
    return optax.apply_updates(d_params, updates), new_state, d_opt, per_image, hits

  def fake_batch(g_params, g_stats, key, b):
    z = jax.random.normal(key, (b, z_dim), jnp.float32)
    image, _, _ = g_apply(g_params, g_stats, z)
    return jax.lax.stop_gradient(image)

  def discriminator_phase(state: GANState, real, key) -> tuple[GANState, Metrics]:
    b = real.shape[0]
    real_labels = jnp.full((b,), k, jnp.int32)
    fake_keys = jax.random.split(key, k)
    if d_update_mode == "paper":
      # A Python loop, not lax.scan: inside an XLA:CPU while loop the same D update and
      # G forward run ~25x slower (measured, benchmarks/README.md), and k is small.
      carry = (state.d_params, state.d_state, state.d_opt_state)
      outs = []
      for i in range(k):
        g_params_i, g_stats_i = _generator_slice((state.g_params, state.g_batch_stats), i)
        d_params, d_state, d_opt, loss_r, hit_r = d_update(*carry, real, real_labels)
        fake = fake_batch(g_params_i, g_stats_i, fake_keys[i], b)
        d_params, d_state, d_opt, loss_f, hit_f = d_update(
          d_params, d_state, d_opt, fake, jnp.full((b,), i, jnp.int32)
        )
        carry = (d_params, d_state, d_opt)
        outs.append((loss_r, loss_f, hit_r, hit_f))
      d_params, d_state, d_opt = carry
      loss_r, loss_f, acc_r, acc_f = (jnp.stack(o) for o in zip(*outs, strict=True))
    else:  # joint
      fakes = map_generators(
        lambda p, s, key: fake_batch(p, s, key, b),
        (state.g_params, state.g_batch_stats, fake_keys),
      )  # [k, b, s, s, 3]
      images = jnp.concatenate([real, fakes.reshape(k * b, *real.shape[1:])])
      labels = jnp.concatenate([real_labels, jnp.repeat(jnp.arange(k, dtype=jnp.int32), b)])

      d_params, d_state, d_opt, loss, hits = d_update(
        state.d_params, state.d_state, state.d_opt_state, images, labels
      )
      loss_r, loss_f, acc_r, acc_f = loss[:b], loss[b:], hits[:b], hits[b:]
    metrics = {
      "d_loss_real": loss_r.mean(),
      "d_loss_fake": loss_f.mean(),
      "d_acc_real": acc_r.mean(),
      "d_acc_fake": acc_f.mean(),
    }
    metrics["d_loss"] = metrics["d_loss_real"] + metrics["d_loss_fake"]
    state = state.replace(d_params=d_params, d_state=d_state, d_opt_state=d_opt)
    return state, metrics

  def transfer_matrix(images, feats, alpha):
    """[k, k] ungated L_t,s from the stacked generator outputs."""
    if transfer == "none" or k == 1:
      return jnp.zeros((k, k), jnp.float32)
    if transfer == "image":
      reps = [losses.image_representation(images)]
    else:
      reps = [losses.attention_map(feats[m - 1]) for m in layers]
    return losses.pairwise_transfer_losses(reps, alpha)

  def generator_phase(state: GANState, b, key, graph: graph_lib.GraphArrays, progress):
    z = jax.random.normal(key, (b, z_dim), jnp.float32)  # the same z for every generator
    w_d = gates_lib.gate_weights(graph.gates_d, progress)
    w_t = gates_lib.gate_weights(graph.gates_transfer, progress)

    def loss_fn(g_params):
      images, feats, new_stats = map_generators(
        lambda p, s: g_apply(p, s, z), (g_params, state.g_batch_stats)
      )
      logits = jax.vmap(d_logits, in_axes=(None, None, 0))(state.d_params, state.d_state, images)
      adv = losses.generator_adversarial_loss(logits)  # [k]
      trans = transfer_matrix(images, feats, graph.alpha)  # [k, k]
      total, gated_t = losses.gated_generator_losses(adv, trans, w_d, w_t)
      return total.sum(), (new_stats, adv, gated_t, total)

    grads, (new_stats, adv, gated_t, total) = jax.grad(loss_fn, has_aux=True)(state.g_params)
    updates, g_opt = jax.vmap(tx_g.update)(grads, state.g_opt_state, state.g_params)
    g_params = jax.vmap(optax.apply_updates)(state.g_params, updates)
    g_ema = state.g_ema
    if g_ema is not None:
      g_ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, g_ema, g_params)
    state = state.replace(
      g_params=g_params, g_batch_stats=new_stats, g_opt_state=g_opt, g_ema=g_ema
    )
    metrics = {
      "g_adv": adv,
      "g_transfer": gated_t,
      "g_loss": total,
      "gate_d": w_d,
      "gate_transfer": w_t,
    }
    return state, metrics

  def train_step(state: GANState, real: jax.Array, graph: graph_lib.GraphArrays):
    step_key = jax.random.fold_in(state.key, state.step)
    d_key, g_key = jax.random.split(step_key)
    progress = progress_fn(state.step)
    state, d_metrics = discriminator_phase(state, real, d_key)
    state, g_metrics = generator_phase(state, real.shape[0], g_key, graph, progress)
    metrics: dict[str, Any] = {**d_metrics, **g_metrics, "progress": progress}
    return state.replace(step=state.step + 1), metrics

  return train_step
