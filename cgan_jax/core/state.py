"""Training state and its construction.

`GANState` holds arrays only; models, optimizers and the config are closed over by the
step factories. The k generators are ONE pytree whose leaves have a leading axis of k.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cgan_jax.core import models

PyTree = Any


@flax.struct.dataclass
class GANState:
  """Everything a run needs to continue bit-for-bit.

  Attributes:
    step: int32 [], optimizer steps (of the generators) done.
    g_params: generator parameters, leaves [k, ...].
    g_batch_stats: generator BatchNorm running statistics, leaves [k, ...].
    g_opt_state: generator optimizer state, leaves [k, ...].
    g_ema: exponential moving average of g_params ([k, ...]), or None when off.
    d_params: discriminator parameters.
    d_state: the discriminator's other collections ({'spectral': ...} or
      {'batch_stats': ...}), updated only in its own update.
    d_opt_state: discriminator optimizer state.
    key: uint32 [2], the training-loop key; step t uses fold_in(key, t).
  """

  step: jax.Array
  g_params: PyTree
  g_batch_stats: PyTree
  g_opt_state: PyTree
  g_ema: PyTree
  d_params: PyTree
  d_state: PyTree
  d_opt_state: PyTree
  key: jax.Array


def create_train_state(
  key: jax.Array,
  *,
  config,
  generator: models.Generator,
  discriminator: models.Discriminator,
  tx_g: optax.GradientTransformation,
  tx_d: optax.GradientTransformation,
) -> GANState:
  """Initialises k generators (one stacked pytree), the discriminator and optimizers.

  Args:
    key: the init key.
    config: a validated config.
    generator, discriminator, tx_g, tx_d: the modules and optimizers (`run.builder`).

  Returns:
    A `GANState` at step 0 whose loop key is derived from `key`.
  """
  k = config.model.k
  s = config.data.image_size
  g_key, d_key, loop_key = jax.random.split(key, 3)
  z = jnp.zeros((1, config.model.z_dim), jnp.float32)
  g_vars = jax.vmap(lambda kk: generator.init(kk, z, train=False))(jax.random.split(g_key, k))
  g_params = g_vars["params"]
  d_vars = discriminator.init(d_key, jnp.zeros((1, s, s, 3), jnp.float32), train=False)
  d_vars = dict(d_vars)
  d_params = d_vars.pop("params")
  ema_decay = config.model.get("ema_decay", 0.0)
  return GANState(
    step=jnp.zeros((), jnp.int32),
    g_params=g_params,
    g_batch_stats=g_vars["batch_stats"],
    g_opt_state=jax.vmap(tx_g.init)(g_params),
    g_ema=jax.tree.map(jnp.copy, g_params) if ema_decay > 0 else None,
    d_params=d_params,
    d_state=d_vars,
    d_opt_state=tx_d.init(d_params),
    key=loop_key,
  )
