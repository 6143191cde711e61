"""Models: shapes, stacking over k, spectral norm."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cgan_jax.core import models

from .conftest import ROOT, build, tiny_config


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
    "SpectralNorm_0": params["Conv4x4s2_0"]["kernel"],
    "SpectralNorm_1": params["Conv4x4s2_1"]["kernel"],
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


def _plain_conv_transpose(x, kernel):
  """The layer as flax defines it: nn.ConvTranspose, 4x4, stride 2, padding 2."""
  layer = nn.ConvTranspose(
    kernel.shape[-1], (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False
  )
  return layer.apply({"params": {"kernel": kernel}}, x)


# (h, cin, cout): both phase forms (conv: h >= 8 and cout >= 16; col2im otherwise; each
# shape also runs both forms directly), odd sizes, 1x1 inputs and non-square inputs.
CT_SHAPES = [
  (1, 3, 5),
  (2, 4, 8),
  (4, 16, 8),
  (3, 5, 7),
  (8, 8, 16),
  (9, 5, 17),
  (16, 6, 6),
  (17, 5, 7),
  (16, 16, 3),
]
PHASE_FORMS = {"conv": models._phase_conv, "col2im": models._phase_col2im}


@pytest.mark.parametrize("h,cin,cout", CT_SHAPES)
def test_phase_conv_transpose_equals_plain_form(h, cin, cout):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(h * 100 + cin), 3)
  x = jax.random.normal(kx, (2, h, h + 1, cin))  # non-square too
  kernel = jax.random.normal(kk, (4, 4, cin, cout))
  want = _plain_conv_transpose(x, kernel)
  assert want.shape == (2, 2 * h, 2 * h + 2, cout)
  tol = {"rtol": 1e-5, "atol": 1e-5 * float(jnp.abs(want).max())}
  for impl in models.CONV_IMPLS:
    np.testing.assert_allclose(models.conv_transpose_2x(x, kernel, impl), want, **tol)
  for form in PHASE_FORMS.values():
    np.testing.assert_allclose(form(x, kernel), want, **tol)
  # gradients with respect to the input and the kernel (what the XLA form is slow at)
  g = jax.random.normal(kg, want.shape)

  def grads(fn):
    return jax.grad(lambda x, w: jnp.sum(fn(x, w) * g), argnums=(0, 1))(x, kernel)

  want_g = grads(_plain_conv_transpose)
  got_g = grads(lambda x, w: models.conv_transpose_2x(x, w, "phase"))
  for a, b in zip(got_g, want_g, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize(
  "h,cout,form", [(4, 256, "col2im"), (8, 128, "conv"), (16, 64, "conv"), (32, 3, "col2im")]
)
def test_phase_form_choice(h, cout, form):
  """The conv form (a convolution in the jaxpr) from 8x8 inputs with 16+ output channels;
  the col2im form (a matmul) for 4x4 inputs and for the image layer."""
  jaxpr = jax.make_jaxpr(models._phase_forward)(jnp.zeros((2, h, h, 8)), jnp.zeros((4, 4, 8, cout)))
  prims = {str(e.primitive) for e in jaxpr.jaxpr.eqns}
  uses = ("conv_general_dilated" in prims, "dot_general" in prims)
  assert uses == ((True, False) if form == "conv" else (False, True)), prims


@pytest.mark.parametrize("form", ["auto", *PHASE_FORMS])
def test_phase_conv_transpose_under_vmap_over_generators(form):
  """vmap over stacked kernels ([k, ...], as in the generator update) == a Python loop."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 8, 8, 16))
  kernels = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 16, 24))
  fn = models.conv_transpose_2x if form == "auto" else PHASE_FORMS[form]
  got = jax.vmap(fn)(x, kernels)
  for i in range(3):
    np.testing.assert_allclose(
      got[i], _plain_conv_transpose(x[i], kernels[i]), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("batched", [(True, True), (False, True), (True, False)])
def test_phase_conv_transpose_gradients_under_vmap(batched):
  """The custom VJP's batching rule (a loop over the mapped axis) == per-slice gradients,
  whichever of x and the kernel is mapped (stacked kernels: the generator update)."""
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(7), 3)
  x = jax.random.normal(kx, (3, 2, 4, 5, 6))
  kernels = jax.random.normal(kk, (3, 4, 4, 6, 5))
  g = jax.random.normal(kg, (3, 2, 8, 10, 5))
  x_axis, k_axis = (0 if b else None for b in batched)
  xs = x if batched[0] else x[0]
  ks = kernels if batched[1] else kernels[0]

  def grads(fn, x, kernel, g):
    return jax.grad(lambda x, w: jnp.sum(fn(x, w) * g), argnums=(0, 1))(x, kernel)

  phase = lambda x, w: models.conv_transpose_2x(x, w, "phase")  # noqa: E731
  got = jax.vmap(lambda x, w, g: grads(phase, x, w, g), in_axes=(x_axis, k_axis, 0))(xs, ks, g)
  for i in range(3):
    want = grads(
      _plain_conv_transpose, x[i] if batched[0] else x[0], kernels[i] if batched[1] else ks, g[i]
    )
    for a, b in zip(got, want, strict=True):
      np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_conv_transpose_layer_matches_flax_layer_params_and_output():
  """Same parameter names, shapes and init distribution as nn.ConvTranspose; same output."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 32))
  ours = models.ConvTranspose2x(16, init_scheme="lecun")
  flax_layer = nn.ConvTranspose(16, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))
  p = ours.init(jax.random.PRNGKey(1), x)
  q = flax_layer.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, q)
  # lecun_normal over fan_in = 4 * 4 * 32: std 1 / sqrt(512)
  np.testing.assert_allclose(float(jnp.std(p["params"]["kernel"])), 512**-0.5, rtol=0.1)
  p = {"params": {**p["params"], "bias": jnp.arange(16.0)}}
  for impl in models.CONV_IMPLS:
    np.testing.assert_allclose(
      models.ConvTranspose2x(16, impl=impl).apply(p, x), flax_layer.apply(p, x), atol=1e-5
    )


def _generator_grads(impl, dtype, variables, z):
  gen = models.Generator(image_size=32, width=8, dtype=dtype, conv_impl=impl)

  def loss(params):
    (img, feats), _ = gen.apply(
      {**variables, "params": params}, z, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(jnp.square(img)) + jnp.mean(feats[2].astype(jnp.float32)), (img, feats)

  return jax.grad(loss, has_aux=True)(variables["params"])


def test_generator_phase_and_xla_forms_agree():
  """Whole generator, both forms, same parameters: images, features and gradients."""
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 100))
  variables = models.Generator(image_size=32, width=8).init(jax.random.PRNGKey(1), z, train=False)
  xla_variables = models.Generator(image_size=32, width=8, conv_impl="xla").init(
    jax.random.PRNGKey(1), z, train=False
  )
  assert jax.tree.structure(variables) == jax.tree.structure(xla_variables)
  (g1, (img1, f1)) = _generator_grads("phase", jnp.float32, variables, z)
  (g2, (img2, f2)) = _generator_grads("xla", jnp.float32, variables, z)
  np.testing.assert_allclose(img1, img2, atol=1e-5)
  for a, b in zip(f1, f2, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()) + 1e-7, rtol=1e-5)


def test_generator_phase_form_in_bfloat16_is_as_accurate_as_xla_form():
  """bf16 gradients of both forms sit at the same distance from the float32 ones."""
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 100))
  variables = models.Generator(image_size=32, width=8).init(jax.random.PRNGKey(1), z, train=False)
  ref, _ = _generator_grads("phase", jnp.float32, variables, z)
  phase, (img, _) = _generator_grads("phase", jnp.bfloat16, variables, z)
  xla, _ = _generator_grads("xla", jnp.bfloat16, variables, z)
  assert img.dtype == jnp.float32 and bool(jnp.isfinite(img).all())

  def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

  for p, x, r in zip(
    jax.tree.leaves(phase), jax.tree.leaves(xla), jax.tree.leaves(ref), strict=True
  ):
    assert p.dtype == jnp.float32
    assert rel(p, r) <= 1.1 * rel(x, r) + 5e-3


@pytest.mark.parametrize("side,cin,cout", [(4, 3, 5), (8, 6, 4), (16, 3, 8), (6, 4, 4)])
def test_discriminator_conv_phase_gradient_equals_autodiff(side, cin, cout):
  """conv_4x4_s2's custom VJP (input gradient by conv_transpose_2x) == plain autodiff."""
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(side + cin), 3)
  x = jax.random.normal(kx, (3, side, side + 2, cin))
  kernel = jax.random.normal(kk, (4, 4, cin, cout))
  layer = nn.Conv(cout, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)
  want = layer.apply({"params": {"kernel": kernel}}, x)
  g = jax.random.normal(kg, want.shape)
  for impl in models.CONV_IMPLS:
    got = models.conv_4x4_s2(x, kernel, impl)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    grads = jax.grad(lambda x, w, i=impl: jnp.sum(models.conv_4x4_s2(x, w, i) * g), (0, 1))(
      x, kernel
    )
    want_g = jax.grad(lambda x, w: jnp.sum(layer.apply({"params": {"kernel": w}}, x) * g), (0, 1))(
      x, kernel
    )
    for a, b in zip(grads, want_g, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
  # under vmap over stacked images (the generator update) and inside a spectral-norm wrap
  batched = jax.vmap(jax.grad(lambda x: jnp.sum(models.conv_4x4_s2(x, kernel) ** 2)))(
    jnp.stack([x, 2 * x])
  )
  np.testing.assert_allclose(
    batched[1],
    jax.grad(lambda x: jnp.sum(layer.apply({"params": {"kernel": kernel}}, x) ** 2))(2 * x),
    rtol=1e-5,
    atol=1e-3,
  )


def test_discriminator_phase_and_xla_forms_agree_with_spectral_norm():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  phase = models.Discriminator(k=2, image_size=32, width=8)
  xla = models.Discriminator(k=2, image_size=32, width=8, conv_impl="xla")
  variables = phase.init(jax.random.PRNGKey(1), x, train=False)

  def grads(disc):
    def loss(p, x):
      logits, _ = disc.apply({**variables, "params": p}, x, train=True, mutable=["spectral"])
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    return jax.grad(loss, argnums=(0, 1))(variables["params"], x)

  for a, b in zip(jax.tree.leaves(grads(phase)), jax.tree.leaves(grads(xla)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()) + 1e-8)


def _kernels(variables):
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
  }


def test_dcgan_init_is_normal_002_with_batchnorm_scale_near_one():
  """DCGAN's init (the default): kernels N(0, 0.02), biases 0, BatchNorm scale N(1, 0.02)."""
  gen = models.Generator(image_size=32, width=16)
  v = gen.init(jax.random.PRNGKey(0), jnp.zeros((1, 100)), train=False)
  leaves = _kernels(v)
  kernels = [a for name, a in leaves.items() if name.endswith("kernel")]
  assert len(kernels) == 4  # the projection of z and three transposed convolutions
  for a in kernels:
    np.testing.assert_allclose(float(jnp.std(a)), 0.02, rtol=0.1)
    assert abs(float(jnp.mean(a))) < 0.002
  scales = [a for name, a in leaves.items() if name.endswith("scale")]
  assert len(scales) == 3
  for a in scales:
    assert 0.9 < float(a.min()) and float(a.max()) < 1.1 and float(jnp.std(a)) > 0.005
  assert all(float(jnp.abs(a).max()) == 0 for n, a in leaves.items() if n.endswith("bias"))


def test_torch_init_uses_pytorchs_fan_in_conventions():
  """'torch': U(+-1/sqrt(fan_in)), fan_in = cout * 16 for a transposed convolution."""
  layer = models.ConvTranspose2x(8, init_scheme="torch")
  v = layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 64)))
  bound = 1 / np.sqrt(8 * 16)
  kernel = np.asarray(v["params"]["kernel"])
  assert kernel.max() <= bound and kernel.min() >= -bound and kernel.max() > 0.9 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.05)
  conv = models.Conv4x4s2(8, init_scheme="torch")
  v = conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  assert np.abs(np.asarray(v["params"]["kernel"])).max() <= 1 / np.sqrt(3 * 16)


def test_unknown_init_scheme_is_a_config_error():
  from cgan_jax import configlib
  from cgan_jax.errors import ConfigError

  c = configlib.load_config(os.fspath(ROOT / "configs" / "cifar64.py") + ":smoke")
  c.model.init = "xavier"
  with pytest.raises(ConfigError, match=r"config.model.init='xavier' is not allowed"):
    configlib.validate_config(c)
