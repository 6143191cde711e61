"""The jitted k-generator training step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgan_jax import configlib
from cgan_jax.core import gates, graph, losses, steps
from cgan_jax.errors import ConfigError
from cgan_jax.run import builder

from . import edge_losses
from .conftest import build, real_batch, tiny_config


def _changed(a, b):
  return any(jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), a, b)))


@pytest.mark.parametrize(
  "variant,d_update",
  [
    ("dcgan", "paper"),
    ("dcgan_sn", "paper"),
    ("madgan", "paper"),
    ("proposed", "paper"),
    ("proposed3", "paper"),
    ("proposed", "joint"),
  ],
)
def test_one_step_of_each_method(variant, d_update):
  c = tiny_config(variant, train__d_update=d_update)
  st, step, ga, _ = build(c)
  new, m = jax.jit(step)(st, real_batch(c), ga)
  assert int(new.step) == 1
  for name, value in m.items():
    assert np.all(np.isfinite(np.asarray(value))), name
  k = c.model.k
  chex.assert_shape([m["g_adv"], m["g_transfer"], m["g_loss"], m["gate_d"]], (k,))
  chex.assert_shape(m["gate_transfer"], (k, k))
  assert _changed(new.g_params, st.g_params)
  assert _changed(new.d_params, st.d_params)
  assert _changed(new.d_state, st.d_state)  # SN vectors / BN statistics, D's own update
  assert _changed(new.g_batch_stats, st.g_batch_stats)
  for i in range(k):  # every generator moved
    assert _changed(
      jax.tree.map(lambda x, i=i: x[i], new.g_params),
      jax.tree.map(lambda x, i=i: x[i], st.g_params),
    )
  if c.graph.transfer == "none" or k == 1:
    np.testing.assert_array_equal(m["g_transfer"], 0.0)
  else:
    assert np.all(np.asarray(m["g_transfer"]) > 0)


@pytest.mark.parametrize("d_update", ["paper", "joint"])
def test_unrolled_generators_equal_vmapped(d_update):
  """config.train.gen_map: applying the k generators one by one or through vmap is the
  same step (up to float rounding)."""
  states = {}
  for gen_map in ("vmap", "unroll"):
    c = tiny_config("proposed", model__k=3, train__d_update=d_update, train__gen_map=gen_map)
    assert configlib.unroll_generators(c) == (gen_map == "unroll")
    st, step, ga, _ = build(c)
    jitted = jax.jit(step)
    for i in range(2):
      st, _ = jitted(st, real_batch(c, seed=i), ga)
    states[gen_map] = st
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
    states["vmap"],
    states["unroll"],
  )


def test_gen_map_auto_unrolls_only_on_cpu_without_a_gen_axis():
  c = tiny_config("proposed")
  assert c.train.gen_map == "auto"
  assert configlib.unroll_generators(c) == (jax.default_backend() == "cpu")
  c.model.k, c.train.gen_devices = 2, 2
  assert not configlib.unroll_generators(c)


def test_gate_changes_do_not_retrace():
  c = tiny_config("proposed", model__k=3)
  st, step, ga, _ = build(c)
  traced = chex.assert_max_traces(step, n=1)
  jitted = jax.jit(traced)
  other_graph = graph.GraphArrays(
    gates_d=jnp.array([gates.CUTOFF, gates.POSITIVE_LINEAR, gates.THROUGH], jnp.int32),
    gates_transfer=jnp.asarray(
      graph.parse_gates_transfer(
        "-,negative_linear,cutoff;through,-,positive_linear;cutoff,cutoff,-", 3
      )
    ),
    alpha=jnp.asarray(10.0, jnp.float32),
  )
  # a different graph, learning rates and number of epochs: still the same trace
  other = ga.replace(graph=other_graph, g_lr=np.float32(1e-3), num_epochs=np.int32(7))
  real = real_batch(c)
  st1, m1 = jitted(st, real, ga)
  st2, m2 = jitted(st1, real, other)
  np.testing.assert_array_equal(m2["gate_d"], [0.0, 0.0, 1.0])  # epoch 0: positive = 0
  np.testing.assert_array_equal(m2["gate_transfer"][0], [0.0, 1.0, 0.0])
  chex.clear_trace_counter()


def test_cutoff_edges_pass_exactly_zero_gradient():
  """A generator whose every incoming edge is cut off does not move at all (Adam of 0 = 0)."""
  c = tiny_config(
    "proposed",
    model__k=3,
    graph__gates_d="through,through,cutoff",
    graph__gates_transfer="-,through,cutoff;through,-,cutoff;through,through,-",
  )
  st, step, ga, _ = build(c)
  new, m = jax.jit(step)(st, real_batch(c), ga)
  g2_old = jax.tree.map(lambda x: x[2], st.g_params)
  g2_new = jax.tree.map(lambda x: x[2], new.g_params)
  jax.tree.map(np.testing.assert_array_equal, g2_new, g2_old)
  assert _changed(
    jax.tree.map(lambda x: x[0], new.g_params), jax.tree.map(lambda x: x[0], st.g_params)
  )
  assert float(m["g_loss"][2]) == 0.0


def test_step_is_deterministic_and_depends_on_step_counter():
  c = tiny_config("madgan")
  st, step, ga, _ = build(c)
  jitted = jax.jit(step)
  a, _ = jitted(st, real_batch(c), ga)
  b, _ = jitted(st, real_batch(c), ga)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # the same inputs at a later step use a different z (fold_in(key, step))
  c_state, _ = jitted(st.replace(step=jnp.int32(5)), real_batch(c), ga)
  assert _changed(c_state.g_params, a.g_params)


def test_ema_tracks_parameters():
  c = tiny_config("proposed", model__ema_decay=0.5)
  st, step, ga, _ = build(c)
  new, _ = jax.jit(step)(st, real_batch(c), ga)
  jax.tree.map(
    lambda e, p0, p1: np.testing.assert_allclose(e, 0.5 * p0 + 0.5 * p1, rtol=1e-6, atol=1e-7),
    new.g_ema,
    st.g_params,
    new.g_params,
  )


def test_bfloat16_smoke_config_is_finite_and_keeps_float32_state():
  """config.dtype=bfloat16 computes in bf16; params and optimizer state stay float32."""
  from cgan_jax import configlib

  from .conftest import ROOT

  c = configlib.load_config(str(ROOT / "configs" / "cifar64.py") + ":smoke")
  c.dtype = "bfloat16"
  c.data.source = "synthetic"
  st, step, g, (gen, _) = build(c)
  step = jax.jit(step)
  for i in range(3):
    st, m = step(st, real_batch(c, seed=i), g)
    assert np.isfinite(m["d_loss"]) and np.all(np.isfinite(m["g_loss"])), m
  for tree in (st.g_params, st.d_params, st.g_opt_state, st.d_opt_state):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
  z = jnp.zeros((2, c.model.z_dim))
  params = jax.tree.map(lambda x: x[0], st.g_params)
  stats = jax.tree.map(lambda x: x[0], st.g_batch_stats)
  image, feats = gen.apply({"params": params, "batch_stats": stats}, z, train=False)
  assert feats[0].dtype == jnp.bfloat16  # the hidden layers really compute in bf16
  assert image.dtype == jnp.float32  # tanh and the losses are float32


def test_registered_toy_transfer_trains():
  """A new transfer method is one function plus one registry entry (README "Extending")."""

  def mean_colour(images, feats):
    """Compare the generators' per-sample mean colours (normalised)."""
    del feats
    return [losses.normalize_flat(images.mean(axis=(-3, -2)), 1)]

  name = "toy_mean_colour"
  graph.register_transfer(name, graph.TransferMethod(mean_colour))
  try:
    with pytest.raises(ValueError, match="already registered"):
      graph.register_transfer(name, graph.TransferMethod(mean_colour))
    c = tiny_config("proposed", graph__transfer=name)  # validated against the registry
    st, step, hp, _ = build(c)
    new, m = jax.jit(step)(st, real_batch(c), hp)
    g_transfer = np.asarray(m["g_transfer"])
    assert np.all(np.isfinite(g_transfer)) and np.all(g_transfer > 0), g_transfer
    assert _changed(new.g_params, st.g_params)
  finally:
    del graph.TRANSFERS[name]
  with pytest.raises(ConfigError, match=r"config.graph.transfer='toy_mean_colour' is not allowed"):
    tiny_config("proposed", graph__transfer=name)


def test_registered_toy_gan_loss_trains():
  """A new adversarial objective is one pair of functions plus one registry entry (README
  "Extending"); the step uses it for D and for every G_i."""
  seen = []

  def least_squares_d(logits, label):  # (softmax(x)_label - 1)^2, per image
    labels = jnp.broadcast_to(jnp.asarray(label, jnp.int32), logits.shape[:1])
    p = jnp.take_along_axis(jax.nn.softmax(logits), labels[:, None], axis=-1)[:, 0]
    seen.append("d")
    return jnp.square(p - 1.0)

  def least_squares_g(logits):  # (d_{k+1}(G(z)) - 1)^2, batch mean
    seen.append("g")
    return jnp.square(jax.nn.softmax(logits)[..., -1] - 1.0).mean(axis=-1)

  name = "toy_least_squares"
  losses.register_gan_loss(name, losses.GanLoss(least_squares_d, least_squares_g))
  try:
    with pytest.raises(ValueError, match="already registered"):
      losses.register_gan_loss(name, losses.GanLoss(least_squares_d, least_squares_g))
    c = tiny_config("proposed", train__gan_loss=name)  # validated against the registry
    st, step, hp, _ = build(c)
    new, m = jax.jit(step)(st, real_batch(c), hp)
    assert set(seen) == {"d", "g"}
    g_adv = np.asarray(m["g_adv"])
    assert np.all((g_adv >= 0) & (g_adv <= 1)), g_adv  # a squared probability gap
    assert _changed(new.g_params, st.g_params) and _changed(new.d_params, st.d_params)
  finally:
    del losses.GAN_LOSSES[name]
  with pytest.raises(ConfigError, match=r"config.train.gan_loss='toy_least_squares' is not all"):
    tiny_config("proposed", train__gan_loss=name)


def test_hinge_loss_is_the_two_class_hinge_gan_for_k_1():
  """With k = 1 the multi-class hinge is the hinge GAN of Lim & Ye / Miyato et al.:
  D: relu(1 - D(x)) on real, relu(1 + D(G(z))) on fake; G: -D(G(z)); D(x) = l_real - l_fake.
  For k > 1 the margin is against the largest other logit (NumPy reference)."""
  rng = np.random.default_rng(0)
  two = rng.normal(size=(6, 2)).astype(np.float32) * 2
  dx = two[:, 1] - two[:, 0]
  hinge = losses.GAN_LOSSES["hinge"]
  np.testing.assert_allclose(hinge.discriminator(two, 1), np.maximum(0, 1 - dx), rtol=1e-6)
  np.testing.assert_allclose(hinge.discriminator(two, 0), np.maximum(0, 1 + dx), rtol=1e-6)
  np.testing.assert_allclose(hinge.generator(two), -dx.mean(), rtol=1e-6)
  four = rng.normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 2, 1, 3])
  ref = [max(0.0, 1 - (x[y] - np.delete(x, y).max())) for x, y in zip(four, labels, strict=True)]
  np.testing.assert_allclose(hinge.discriminator(four, labels), ref, rtol=1e-6)
  c = tiny_config("proposed", train__gan_loss="hinge")
  st, step, hp, _ = build(c)
  new, m = jax.jit(step)(st, real_batch(c), hp)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in m.values())
  assert _changed(new.g_params, st.g_params)


@pytest.mark.parametrize(
  "field,value,message",
  [
    (
      "train__d_update",
      "alternate",
      r"config.train.d_update='alternate' is not allowed; choose one of: 'paper', 'joint'",
    ),
    (
      "graph__transfer_reduction",
      "max",
      r"config.graph.transfer_reduction='max' is not allowed; choose one of: 'mean', 'sum'",
    ),
  ],
)
def test_registry_names_are_validated(field, value, message):
  with pytest.raises(ConfigError, match=message):
    tiny_config("proposed", **{field: value})


def test_phases_are_separate_pure_functions():
  """The discriminator phase alone moves only D; the transfer matrix alone is eq. (5)."""
  c = tiny_config("proposed")
  st, _, hp, _ = build(c)
  spec = builder.step_spec(c)
  new, m = jax.jit(lambda s, r, h: steps.discriminator_phase(spec, s, r, jax.random.PRNGKey(0), h))(
    st, real_batch(c), hp
  )
  assert _changed(new.d_params, st.d_params)
  jax.tree.map(np.testing.assert_array_equal, new.g_params, st.g_params)
  assert set(m) == {"d_loss", "d_loss_real", "d_loss_fake", "d_acc_real", "d_acc_fake"}
  images = jax.random.uniform(jax.random.PRNGKey(2), (2, 3, 16, 16, 3), minval=-1, maxval=1)
  mat = steps.transfer_matrix(spec, images, (), 1000.0)
  want = edge_losses.image_transfer_loss(images[1], images[0], 1000.0)
  np.testing.assert_allclose(mat[0, 1], want, rtol=1e-6)
  assert float(mat[0, 0]) == 0.0
