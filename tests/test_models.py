"""Models: shapes, stacking over k, spectral norm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cgan_jax import models

from .conftest import build, tiny_config


@pytest.mark.parametrize("size,n_layers", [(16, 3), (32, 4), (64, 5)])
def test_generator_shapes_and_features(size, n_layers):
  gen = models.Generator(image_size=size, width=4)
  z = jnp.ones((2, 100))
  variables = gen.init(jax.random.PRNGKey(0), z, train=False)
  image, feats = gen.apply(variables, z, train=False)
  assert image.shape == (2, size, size, 3)
  assert len(feats) == n_layers == models.num_generator_layers(size)
  # 4x4x8w, then channels halve while the side doubles; the last map is the image
  for m, f in enumerate(feats[:-1]):
    assert f.shape == (2, 4 * 2**m, 4 * 2**m, 32 // 2**m)
  assert feats[-1] is image
  assert float(jnp.abs(image).max()) <= 1.0


@pytest.mark.parametrize("norm", ["spectral", "batch"])
def test_discriminator_has_k_plus_one_logits(norm):
  disc = models.Discriminator(k=3, image_size=32, width=4, norm=norm)
  x = jnp.zeros((5, 32, 32, 3))
  variables = disc.init(jax.random.PRNGKey(0), x, train=False)
  assert disc.apply(variables, x, train=False).shape == (5, 4)
  assert set(variables) == {"params", "spectral" if norm == "spectral" else "batch_stats"}


def test_vmapped_generators_equal_python_loop():
  c = tiny_config("proposed", model__k=3)
  st, _, _, (gen, _) = build(c)
  z = jax.random.normal(jax.random.PRNGKey(3), (4, c.model.z_dim))

  def fwd(p, s):
    (img, feats), _ = gen.apply(
      {"params": p, "batch_stats": s}, z, train=True, mutable=["batch_stats"]
    )
    return img, feats

  imgs, feats = jax.vmap(fwd)(st.g_params, st.g_batch_stats)
  for i in range(3):
    p_i = jax.tree.map(lambda x, i=i: x[i], st.g_params)
    s_i = jax.tree.map(lambda x, i=i: x[i], st.g_batch_stats)
    img_i, feats_i = fwd(p_i, s_i)
    np.testing.assert_allclose(imgs[i], img_i, rtol=1e-5, atol=1e-6)
    for f, f_i in zip(feats, feats_i, strict=True):
      np.testing.assert_allclose(f[i], f_i, rtol=1e-5, atol=1e-6)
  # generators are initialised differently
  assert not np.allclose(imgs[0], imgs[1])


def test_stacked_optimizer_update_equals_separate_updates():
  c = tiny_config("proposed", model__k=3)
  st, _, _, _ = build(c)
  tx = optax.adam(2e-4, b1=0.5, b2=0.999)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(7), p.shape), st.g_params)
  opt = jax.vmap(tx.init)(st.g_params)
  for _ in range(2):
    upd, opt = jax.vmap(tx.update)(grads, opt, st.g_params)
  stacked = jax.vmap(optax.apply_updates)(st.g_params, upd)
  for i in range(3):
    p_i = jax.tree.map(lambda x, i=i: x[i], st.g_params)
    g_i = jax.tree.map(lambda x, i=i: x[i], grads)
    o_i = tx.init(p_i)
    for _ in range(2):
      u_i, o_i = tx.update(g_i, o_i, p_i)
    want = optax.apply_updates(p_i, u_i)
    jax.tree.map(
      lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-8), stacked, want
    )


def _sigma_by_layer(spectral):
  out = {}
  for layer, entries in spectral.items():
    for name, v in entries.items():
      if name.endswith("/sigma"):
        out[layer] = float(v)
  return out


def test_spectral_norm_converges_to_largest_singular_value():
  disc = models.Discriminator(k=2, image_size=16, width=4, norm="spectral")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  variables = disc.init(jax.random.PRNGKey(1), x, train=False)
  spectral = variables["spectral"]
  apply = jax.jit(
    lambda s: disc.apply(
      {"params": variables["params"], "spectral": s}, x, train=True, mutable=["spectral"]
    )[1]["spectral"]
  )
  for _ in range(200):
    spectral = apply(spectral)
  params = variables["params"]
  kernels = {
    "SpectralNorm_0": params["Conv_0"]["kernel"],
    "SpectralNorm_1": params["Conv_1"]["kernel"],
    "SpectralNorm_2": params["Dense_0"]["kernel"],
  }
  sigmas = _sigma_by_layer(spectral)
  for name, kernel in kernels.items():
    w = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
    np.testing.assert_allclose(sigmas[name], np.linalg.svd(w, compute_uv=False)[0], rtol=1e-3)


def test_spectral_stats_unchanged_when_updates_off():
  disc = models.Discriminator(k=2, image_size=16, width=4, norm="spectral")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  variables = disc.init(jax.random.PRNGKey(1), x, train=False)
  _, new = disc.apply(variables, x, train=False, mutable=["spectral"])
  jax.tree.map(np.testing.assert_array_equal, new["spectral"], variables["spectral"])
  _, upd = disc.apply(variables, x, train=True, mutable=["spectral"])
  changed = jax.tree.map(
    lambda a, b: not np.array_equal(a, b), upd["spectral"], variables["spectral"]
  )
  assert any(jax.tree.leaves(changed))


def test_conv_transpose_doubles_like_pytorch_padding_1():
  """pad 2 on the dilated input == torch ConvTranspose2d(k=4, s=2, p=1) with a flipped kernel."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 3, 1))
  layer = nn.ConvTranspose(1, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False)
  w = jnp.arange(16.0).reshape(4, 4, 1, 1)
  y = layer.apply({"params": {"kernel": w}}, x)[0, :, :, 0]
  # direct definition of PyTorch's transposed convolution (scatter form, padding 1)
  xs, wt = np.asarray(x[0, :, :, 0]), np.asarray(w[::-1, ::-1, 0, 0])
  full = np.zeros((3 * 2 + 2, 3 * 2 + 2))
  for i in range(3):
    for j in range(3):
      full[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += xs[i, j] * wt
  np.testing.assert_allclose(y, full[1:-1, 1:-1], rtol=1e-5, atol=1e-5)
