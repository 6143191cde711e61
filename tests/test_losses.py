"""Eq. (1)-(5) against NumPy references written from the paper's text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgan_jax.core import gates, losses

from . import edge_losses

RNG = np.random.default_rng(0)


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_eq1(logits, label):
  """-sum_m t_m log d_m with one-hot t, averaged over the batch."""
  d = np_softmax(logits.astype(np.float64))
  t = np.zeros_like(d)
  t[:, label] = 1.0
  return np.mean(-np.sum(t * np.log(d), axis=-1))


def np_eq2(logits):
  """-sum_m t^g_m log d^(i)_m with t^g = 'real' (the last class)."""
  d = np_softmax(logits.astype(np.float64))
  return np.mean(-np.log(d[:, -1]))


def np_eq4(f_s, f_t, alpha, reduce=np.mean):
  """Eq. (3)-(4): Q = (1/C) sum_c F^2 per position; alpha/(MN) sum_m sum_n reduce((..)^2),
  where `reduce` over positions is np.mean ('mean') or np.sum ('sum', the literal eq. 4)."""
  total = 0.0
  m_layers = len(f_s)
  n = f_s[0].shape[0]
  for fs, ft in zip(f_s, f_t, strict=True):
    for i in range(n):
      qs = (fs[i].astype(np.float64) ** 2).mean(-1).ravel()
      qt = (ft[i].astype(np.float64) ** 2).mean(-1).ravel()
      total += reduce((qs / np.linalg.norm(qs) - qt / np.linalg.norm(qt)) ** 2)
  return alpha * total / (m_layers * n)


def np_eq5(g_s, g_t, alpha, reduce=np.mean):
  """Eq. (5): alpha/N sum_n reduce((G_s/|G_s| - G_t/|G_t|)^2) over flattened images."""
  n = g_s.shape[0]
  total = 0.0
  for i in range(n):
    a = g_s[i].astype(np.float64).ravel()
    b = g_t[i].astype(np.float64).ravel()
    total += reduce((a / np.linalg.norm(a) - b / np.linalg.norm(b)) ** 2)
  return alpha * total / n


@pytest.mark.parametrize("label", [0, 1, 2])
def test_eq1_discriminator_loss(label):
  logits = RNG.normal(size=(5, 3)).astype(np.float32)
  got = edge_losses.discriminator_loss(jnp.asarray(logits), label)
  np.testing.assert_allclose(got, np_eq1(logits, label), rtol=1e-5)


def test_eq2_generator_adversarial_loss():
  logits = RNG.normal(size=(3, 5, 4)).astype(np.float32)  # k=3 generators, b=5, k+1=4
  got = losses.generator_adversarial_loss(jnp.asarray(logits))
  want = [np_eq2(logits[i]) for i in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_eq3_attention_map():
  f = RNG.normal(size=(2, 4, 4, 6)).astype(np.float32)
  q = (f.astype(np.float64) ** 2).mean(-1).reshape(2, -1)
  want = q / np.linalg.norm(q, axis=-1, keepdims=True)
  np.testing.assert_allclose(losses.attention_map(jnp.asarray(f)), want, rtol=1e-5)


def test_eq4_feature_transfer_value():
  f_s = [RNG.normal(size=(3, 8, 8, 5)), RNG.normal(size=(3, 4, 4, 7))]
  f_t = [RNG.normal(size=(3, 8, 8, 5)), RNG.normal(size=(3, 4, 4, 7))]
  f_s = [f.astype(np.float32) for f in f_s]
  f_t = [f.astype(np.float32) for f in f_t]
  got = edge_losses.feature_transfer_loss(
    [jnp.asarray(f) for f in f_s], [jnp.asarray(f) for f in f_t], 1000.0
  )
  np.testing.assert_allclose(got, np_eq4(f_s, f_t, 1000.0), rtol=1e-5)


def test_eq5_image_transfer_value():
  g_s = RNG.uniform(-1, 1, size=(4, 8, 8, 3)).astype(np.float32)
  g_t = RNG.uniform(-1, 1, size=(4, 8, 8, 3)).astype(np.float32)
  got = edge_losses.image_transfer_loss(jnp.asarray(g_s), jnp.asarray(g_t), 1000.0)
  np.testing.assert_allclose(got, np_eq5(g_s, g_t, 1000.0), rtol=1e-5)


def _numeric_grad(f, x, idx, eps=1e-4):
  xp, xm = x.copy(), x.copy()
  xp[idx] += eps
  xm[idx] -= eps
  return (f(xp) - f(xm)) / (2 * eps)


@pytest.mark.parametrize("kind", ["image", "feature"])
def test_eq4_eq5_gradients(kind):
  """Student gradient matches finite differences of the NumPy reference; teacher gets 0."""
  if kind == "image":
    s = RNG.uniform(-1, 1, size=(2, 4, 4, 3))
    t = RNG.uniform(-1, 1, size=(2, 4, 4, 3))
    jax_fn = lambda a, b: edge_losses.image_transfer_loss(a, b, 1000.0)  # noqa: E731
    np_fn = lambda a, b: np_eq5(a, b, 1000.0)  # noqa: E731
  else:
    s = RNG.normal(size=(2, 4, 4, 3))
    t = RNG.normal(size=(2, 4, 4, 3))
    jax_fn = lambda a, b: edge_losses.feature_transfer_loss([a], [b], 1000.0)  # noqa: E731
    np_fn = lambda a, b: np_eq4([a], [b], 1000.0)  # noqa: E731
  g_s, g_t = jax.grad(jax_fn, argnums=(0, 1))(
    jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
  )
  assert np.all(np.asarray(g_t) == 0.0)
  assert np.abs(np.asarray(g_s)).max() > 0
  for idx in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 3, 1, 2)]:
    want = _numeric_grad(lambda x: np_fn(x, t), s, idx)
    np.testing.assert_allclose(g_s[idx], want, rtol=2e-3, atol=1e-6)


def test_pairwise_matches_single_edges():
  k = 3
  imgs = RNG.uniform(-1, 1, size=(k, 4, 8, 8, 3)).astype(np.float32)
  feats = [
    RNG.normal(size=(k, 4, 8, 8, 5)).astype(np.float32),
    RNG.normal(size=(k, 4, 4, 4, 6)).astype(np.float32),
  ]
  mat_img = losses.pairwise_transfer_losses([losses.image_representation(jnp.asarray(imgs))], 1e3)
  mat_feat = losses.pairwise_transfer_losses(
    [losses.attention_map(jnp.asarray(f)) for f in feats], 1e3
  )
  for t in range(k):
    for s in range(k):
      want_img = np_eq5(imgs[s], imgs[t], 1e3)
      want_feat = np_eq4([f[s] for f in feats], [f[t] for f in feats], 1e3)
      np.testing.assert_allclose(mat_img[t, s], want_img, rtol=1e-4, atol=1e-7)
      np.testing.assert_allclose(mat_feat[t, s], want_feat, rtol=1e-4, atol=1e-7)


def test_pairwise_teacher_gets_no_gradient():
  """d L[t, s] / d rep_t == 0: only the student of an edge moves."""
  k = 3
  rep = jnp.asarray(RNG.normal(size=(k, 2, 5)).astype(np.float32))
  for t in range(k):
    for s in range(k):
      if t == s:
        continue
      g = jax.grad(lambda r, t=t, s=s: losses.pairwise_transfer_losses([r], 1e3)[t, s])(rep)
      assert np.all(np.asarray(g[t]) == 0.0)
      assert np.abs(np.asarray(g[s])).max() > 0


def test_gated_sum_and_cutoff_gives_exact_zero_gradient():
  k = 3
  adv = jnp.asarray(RNG.uniform(0.5, 2, size=k).astype(np.float32))
  trans = jnp.asarray(RNG.uniform(0.1, 1, size=(k, k)).astype(np.float32))
  w_d = jnp.array([1.0, 0.5, 0.0])
  w_t = jnp.array([[9.0, 1.0, 0.0], [0.25, 9.0, 1.0], [1.0, 0.0, 9.0]])  # diagonal ignored
  total, gated = losses.gated_generator_losses(adv, trans, w_d, w_t)
  a, t_, wt = np.asarray(adv), np.asarray(trans), np.asarray(w_t)
  for i in range(k):
    want_t = sum(wt[t, i] * t_[t, i] for t in range(k) if t != i)
    np.testing.assert_allclose(gated[i], want_t, rtol=1e-6)
    np.testing.assert_allclose(total[i], float(w_d[i]) * a[i] + want_t, rtol=1e-6)
  # a cutoff gate (weight 0 from the gate table) passes exactly zero gradient
  w_cut = gates.gate_weights(jnp.array(gates.CUTOFF), 0.37)
  g_adv, g_tr = jax.grad(
    lambda a, t: losses.gated_generator_losses(
      a, t, jnp.array([1.0, 1.0, w_cut]), w_t.at[0, 1].set(w_cut)
    )[0].sum(),
    argnums=(0, 1),
  )(adv, trans)
  assert g_adv[2] == 0.0
  assert g_tr[0, 1] == 0.0
  assert g_tr[1, 0] == 0.25


def test_sum_reduction_against_numpy():
  """config.graph.transfer_reduction='sum': eq. (4)/(5) with a sum over positions, for the
  single edges and the pairwise matrix; 'mean' x positions = 'sum' per layer."""
  f_s = [
    RNG.normal(size=(3, 8, 8, 5)).astype(np.float32),
    RNG.normal(size=(3, 4, 4, 7)).astype(np.float32),
  ]
  f_t = [
    RNG.normal(size=(3, 8, 8, 5)).astype(np.float32),
    RNG.normal(size=(3, 4, 4, 7)).astype(np.float32),
  ]
  got = edge_losses.feature_transfer_loss(
    [jnp.asarray(f) for f in f_s], [jnp.asarray(f) for f in f_t], 10.0, reduction="sum"
  )
  np.testing.assert_allclose(got, np_eq4(f_s, f_t, 10.0, np.sum), rtol=1e-5)
  g_s = RNG.uniform(-1, 1, size=(4, 8, 8, 3)).astype(np.float32)
  g_t = RNG.uniform(-1, 1, size=(4, 8, 8, 3)).astype(np.float32)
  got = edge_losses.image_transfer_loss(jnp.asarray(g_s), jnp.asarray(g_t), 10.0, reduction="sum")
  np.testing.assert_allclose(got, np_eq5(g_s, g_t, 10.0, np.sum), rtol=1e-5)
  mean = edge_losses.image_transfer_loss(jnp.asarray(g_s), jnp.asarray(g_t), 10.0, reduction="mean")
  np.testing.assert_allclose(got, mean * 8 * 8 * 3, rtol=1e-5)
  # the pairwise matrix uses the same reduction
  imgs = np.stack([g_s, g_t])
  mat = losses.pairwise_transfer_losses(
    [losses.image_representation(jnp.asarray(imgs))], 10.0, reduction="sum"
  )
  np.testing.assert_allclose(mat[1, 0], np_eq5(g_s, g_t, 10.0, np.sum), rtol=1e-5)
  np.testing.assert_allclose(mat[0, 1], np_eq5(g_t, g_s, 10.0, np.sum), rtol=1e-5)
  with pytest.raises(ValueError, match="transfer_reduction='max'"):
    edge_losses.image_transfer_loss(jnp.asarray(g_s), jnp.asarray(g_t), 10.0, reduction="max")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_zero_attention_map_has_finite_gradients(reduction):
  """A dead ReLU layer (all-zero features) gives an all-zero map with finite gradients;
  through a cutoff gate the student then gets exactly zero gradient."""
  zero = jnp.zeros((2, 4, 4, 3), jnp.float32)
  teacher = jnp.asarray(RNG.normal(size=(2, 4, 4, 3)), jnp.float32)
  np.testing.assert_array_equal(losses.attention_map(zero), 0.0)
  grad = jax.grad(lambda s: edge_losses.feature_transfer_loss([s], [teacher], 1000.0, reduction))(
    zero
  )
  assert np.all(np.isfinite(np.asarray(grad)))

  def gated(s, gate):
    trans = losses.pairwise_transfer_losses(
      [losses.attention_map(jnp.stack([s, teacher]))], 1000.0, reduction
    )
    w_t = gates.gate_weights(jnp.array([[gates.CUTOFF, gate], [gate, gates.CUTOFF]]), 0.0)
    total, _ = losses.gated_generator_losses(jnp.zeros(2), trans, jnp.ones(2), w_t)
    return total.sum()

  cut = jax.grad(gated)(zero, gates.CUTOFF)
  np.testing.assert_array_equal(cut, 0.0)
  through = jax.grad(gated)(zero, gates.THROUGH)
  assert np.all(np.isfinite(np.asarray(through)))
  # a vector with a norm above eps is normalised exactly as x / ||x||
  x = jnp.asarray(RNG.normal(size=(2, 5)), jnp.float32)
  np.testing.assert_allclose(
    losses.normalize_flat(x, 1), x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-6
  )
