"""DCGAN generator and discriminator (Radford et al., 2016), NHWC, Flax linen.

Generator (image_size = 4 * 2^n, width w):
  layer 1        z [b, 100] -> Dense -> [b, 4, 4, 8w] -> BatchNorm -> ReLU
  layer 2..n     4x4 stride-2 transposed conv, channels halve each layer -> BN -> ReLU
  layer n + 1    4x4 stride-2 transposed conv to 3 channels -> tanh (the image)

  64x64: 4x4x8w, 8x8x4w, 16x16x2w, 32x32xw, 64x64x3 (5 layers, as in DCGAN).
  32x32: 4x4x8w, 8x8x4w, 16x16x2w, 32x32x3 (4 layers).

  `Generator.__call__` returns (image, features) where features[m - 1] is the output of
  layer m (its post-activation map; the last one is the image). Transfer edges choose
  layers by these 1-based numbers: the paper's "2nd and 3rd" and "3rd and 4th" layers.

Discriminator (k + 1 logits; index k = "real"):
  n 4x4 stride-2 convolutions (w, 2w, 4w, ...) with LeakyReLU(0.2) down to 4x4, then a
  Dense layer to k + 1 logits. Normalisation is either spectral norm on every layer
  (`flax.linen.SpectralNorm`, power-iteration vectors in the 'spectral' collection) or,
  for the plain DCGAN baseline, BatchNorm after every convolution but the first.

Transposed convolutions pad by 2 on each side of the dilated input, which equals PyTorch's
`ConvTranspose2d(kernel_size=4, stride=2, padding=1)`, so the output is exactly 2x. They
are `ConvTranspose2x` layers, computed by default in an exact phase-decomposed (sub-pixel)
form that is much faster than XLA's transposed convolution on CPU; see `conv_transpose_2x`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SUPPORTED_IMAGE_SIZES = (16, 32, 64, 128)
D_NORMS = ("spectral", "batch")
SPECTRAL = "spectral"  # collection of the spectral-norm power-iteration state
CONV_IMPLS = ("phase", "xla", "matmul")
# Parameter initialisation schemes (`config.model.init`), see `initializers`.
INITS = ("dcgan", "lecun", "torch")

Dtype = Any
Initializer = Any


def initializers(scheme: str, kind: str, fan_in: int) -> tuple[Initializer, Initializer]:
  """(kernel_init, bias_init) of one layer under an initialisation scheme.

  Schemes:
    dcgan  N(0, 0.02) kernels, zero biases, BatchNorm scale N(1, 0.02) (`batch_norm_scale_init`),
           as in DCGAN (Radford et al., 2016, section 4), which the paper builds on. The
           default: with Flax's lecun normal the SN models stayed collapsed for the first
           epochs (benchmarks/README.md, "Learning parity").
    lecun  Flax's defaults: lecun normal (truncated, std 1/sqrt(fan_in)) kernels, zero biases.
    torch  PyTorch's defaults: kernels and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), where
           fan_in is in_features for Linear, cin * 16 for Conv2d and cout * 16 for
           ConvTranspose2d (PyTorch reads its [cin, cout, 4, 4] weight's second axis).

  Args:
    scheme: one of `INITS`.
    kind: 'dense', 'conv' or 'conv_transpose' (only 'torch' tells them apart).
    fan_in: the layer's fan-in as PyTorch computes it (only 'torch' uses it).
  """
  if scheme == "dcgan":
    return nn.initializers.normal(0.02), nn.initializers.zeros_init()
  if scheme == "lecun":
    return nn.initializers.lecun_normal(), nn.initializers.zeros_init()
  if scheme == "torch":
    bound = 1.0 / math.sqrt(fan_in)

    def uniform(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    return uniform, uniform
  raise ValueError(f"init={scheme!r} must be one of {INITS}")


def batch_norm_scale_init(scheme: str) -> Initializer:
  """BatchNorm's scale: N(1, 0.02) for 'dcgan', ones otherwise (Flax's and PyTorch's)."""
  if scheme == "dcgan":
    return lambda key, shape, dtype=jnp.float32: 1.0 + 0.02 * jax.random.normal(key, shape, dtype)
  return nn.initializers.ones_init()


def num_generator_layers(image_size: int) -> int:
  """Number of generator layers, counting the projection of z and the output layer."""
  return int(math.log2(image_size // 4)) + 1


def _lax_conv_nhwc(conv, x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """A stride-2 `lax` convolution (or transposed one) of x [..., h, w, c], any leading axes."""
  y = conv(
    x.reshape(-1, *x.shape[-3:]),
    kernel,
    (2, 2),
    ((padding, padding), (padding, padding)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  return y.reshape(*x.shape[:-3], *y.shape[1:])


def _matmul_2d(x: jax.Array, w: jax.Array) -> jax.Array:
  """[..., n] @ [n, m] as ONE 2-D matmul, accumulated and returned in float32.

  Flattened because XLA:CPU runs a dot (and its transposes in the gradient) with several
  contracting axes about 6x slower. float32 so that bf16 inputs lose no accuracy in the
  tap sums that follow; the caller casts back.
  """
  y = jnp.matmul(x.reshape(-1, x.shape[-1]), w, preferred_element_type=jnp.float32)
  return y.reshape(*x.shape[:-1], w.shape[-1])


def _phase_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Input-side form: all 4 phases as ONE stride-1 2x2 convolution (XLA's), depth-to-space.

  Output row r = 2m + a' - 1 (a' in {0, 1}) has phase 1 - a' and meets input rows m - 1
  and m, i.e. rows m + u of the input padded by 1, with kernel row 2u + 1 - a'. So
  o[m, n, a', b'] = sum_{u, v in {0, 1}} xp[m + u, n + v] @ kernel[2u + 1 - a', 2v + 1 - b']
  over the (h + 1) x (w + 1) positions of xp (a 2x2 convolution with 4 cout outputs), and
  the output is the depth-to-space of o with its first and last rows and columns cut.
  Costs (h + 1)^2 / h^2 of the exact FLOPs, in one convolution and one copy.
  """
  *lead, h, w, cin = x.shape
  cout = kernel.shape[-1]
  # kernel[2u + a, 2v + b, ci, co] -> [u, v, ci, (1 - a, 1 - b, co)]
  w_conv = kernel.reshape(2, 2, 2, 2, cin, cout)[:, ::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5)
  o = jax.lax.conv_general_dilated(
    x.reshape(-1, h, w, cin),
    w_conv.reshape(2, 2, cin, 4 * cout),
    (1, 1),
    ((1, 1), (1, 1)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    preferred_element_type=jnp.float32,
  )
  o = jnp.swapaxes(o.reshape(*lead, h + 1, w + 1, 2, 2, cout), -4, -3)
  return o.reshape(*lead, 2 * h + 2, 2 * w + 2, cout)[..., 1:-1, 1:-1, :]


def _phase_col2im(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Output-side form: every input pixel times all 16 taps in one exact matmul, then the
  tap planes are placed by depth-to-space and summed.

  Input pixel i with kernel tap t = 2u + p lands on output row 2i + 2 - t, so for each
  (u, v) the planes with p, q flipped form, by depth-to-space, an image D_uv with
  out[r, s] += D_uv[r - 1 + 2u, s - 1 + 2v]: 4 shifted copies, pure data movement.
  """
  *lead, h, w, cin = x.shape
  cout = kernel.shape[-1]
  n = len(lead)
  taps = _matmul_2d(x, kernel.transpose(2, 0, 1, 3).reshape(cin, 16 * cout))
  # [..., h, w, u, 1 - p, v, 1 - q, cout]
  taps = taps.reshape(*lead, h, w, 2, 2, 2, 2, cout)[..., ::-1, :, ::-1, :]
  to_image = [*range(n), n, n + 2, n + 1, n + 3, n + 4]  # [..., h, 1 - p, w, 1 - q, c]
  pad = [(0, 0)] * n + [(1, 1), (1, 1), (0, 0)]
  out = None
  for u in range(2):
    for v in range(2):
      d = taps[..., u, :, v, :, :].transpose(to_image).reshape(*lead, 2 * h, 2 * w, cout)
      shifted = jnp.pad(d, pad)[..., 2 * u : 2 * u + 2 * h, 2 * v : 2 * v + 2 * w, :]
      out = shifted if out is None else out + shifted
  return out


def conv_transpose_2x(x: jax.Array, kernel: jax.Array, impl: str = "phase") -> jax.Array:
  """4x4, stride-2 transposed convolution whose output is exactly 2x its input.

  Same result as `lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)))` (flax's
  `nn.ConvTranspose` with that padding, i.e. PyTorch's ConvTranspose2d(4, 2, padding=1)).

  Phase decomposition: output row 2j + a only meets kernel rows a and a + 2, at input rows
  j - 1 + a and j + a, so each of the 4 output phases (a, b) is an ordinary 2x2
  convolution of the input, padded by 1, with the kernel slice kernel[a::2, b::2]. Two
  exact forms compute them, picked by shape (`_phase_forward`): all 4 phases as one
  stride-1 2x2 XLA convolution followed by depth-to-space (`_phase_conv`), or every input
  pixel times all 16 taps in one matmul, then the taps placed and summed (`_phase_col2im`).
  XLA's own transposed convolution is a dilated convolution that ran ~2x slower than these
  on CPU, with a weight gradient ~30x slower than PyTorch's.

  The gradients of the 'phase' form are not autodiff of those forms (a custom VJP):
  they are two ordinary convolutions, as in PyTorch's ConvTranspose2d backward, since a
  transposed convolution is the adjoint of a strided one (see `_conv_transpose_2x_grads`).
  On CPU that backward measured 1.2-1.7x faster per layer than autodiff of the matmul
  forms (benchmarks/README.md). It is also what the discriminator's input gradient uses
  (`conv_4x4_s2`), so both networks run these forms.

  Args:
    x: [..., h, w, cin] (any leading axes).
    kernel: [4, 4, cin, cout], HWIO, not flipped (flax's convention).
    impl: 'phase' (the decomposition) or 'xla' (`lax.conv_transpose`).

  Returns:
    [..., 2h, 2w, cout].
  """
  if impl == "xla":
    return _lax_conv_nhwc(jax.lax.conv_transpose, x, kernel, padding=2)
  if impl == "matmul":
    return _phase_col2im(x, kernel).astype(jnp.result_type(x, kernel))
  if impl != "phase":
    raise ValueError(f"impl={impl!r} must be one of {CONV_IMPLS}")
  return _conv_transpose_2x_phase(x, kernel)


def _phase_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  h, cout = x.shape[-3], kernel.shape[-1]
  # Measured on CPU at batch 64 and 192 (benchmarks/README.md): the convolution form wins
  # from 8x8 inputs up (up to 2.2x at 16x16 and 32x32); the output-side matmul form wins
  # for 4x4 inputs and for thin outputs (the 3-channel image layer).
  form = _phase_conv if h >= 8 and cout >= 16 else _phase_col2im
  return form(x, kernel).astype(jnp.result_type(x, kernel))


def _adjoint_kernel(kernel: jax.Array) -> jax.Array:
  """The kernel of the adjoint: conv_transpose_2x(., W) and conv_4x4_s2(., flip/swap(W))
  are each other's transposes. Its own inverse."""
  return jnp.swapaxes(kernel[::-1, ::-1], 2, 3)


def _with_grads(forward, grads):
  """forward(x, kernel) with the custom VJP grads(x, kernel, dy) -> (dx, dkernel)."""
  fn = jax.custom_vjp(forward)
  fn.defvjp(lambda x, kernel: (forward(x, kernel), (x, kernel)), lambda res, dy: grads(*res, dy))
  return fn


# How `jax.vmap` (over the k generators, and over a population's members) maps the
# transposed convolutions' custom gradients: 'unroll' (one convolution per mapped index:
# faster on CPU, measured for the k generators), 'batched' (vmap's own rule: one grouped
# convolution for all, what a GPU wants when a population multiplies the count), or 'auto'
# (unroll on CPU, batched elsewhere). Read while tracing.
CONV_GRADS_VMAPS = ("auto", "unroll", "batched")
conv_grads_vmap = "auto"


def _unroll_conv_grads() -> bool:
  if conv_grads_vmap not in CONV_GRADS_VMAPS:
    raise ValueError(f"conv_grads_vmap={conv_grads_vmap!r} must be one of {CONV_GRADS_VMAPS}")
  if conv_grads_vmap == "auto":
    return jax.default_backend() == "cpu"
  return conv_grads_vmap == "unroll"


def _conv_transpose_2x_grads_impl(x: jax.Array, kernel: jax.Array, dy: jax.Array):
  """(dx, dkernel) of conv_transpose_2x(x, kernel) for the output cotangent dy.

  The transposed convolution is the adjoint of the stride-2 convolution with the adjoint
  kernel, so dx is that convolution of dy (XLA's forward convolution) and dkernel comes
  from its weight gradient with x as the cotangent (XLA's weight-gradient convolution):
  two ordinary convolutions, as in PyTorch's ConvTranspose2d backward.
  """
  w_adj = _adjoint_kernel(kernel)
  dx, kernel_vjp = jax.vjp(lambda w: _conv_4x4_s2_xla(dy, w), w_adj)
  (dw_adj,) = kernel_vjp(x.astype(dx.dtype))
  return dx.astype(x.dtype), _adjoint_kernel(dw_adj).astype(kernel.dtype)


_conv_transpose_2x_grads = jax.custom_batching.custom_vmap(_conv_transpose_2x_grads_impl)


@_conv_transpose_2x_grads.def_vmap
def _conv_transpose_2x_grads_vmap(axis_size, in_batched, x, kernel, dy):
  if not _unroll_conv_grads():
    in_axes = tuple(0 if batched else None for batched in in_batched)
    return jax.vmap(_conv_transpose_2x_grads_impl, in_axes=in_axes)(x, kernel, dy), (True, True)
  # Unrolled over the mapped axis (the k generators): vmap's own rule makes the
  # per-generator kernels one grouped convolution, 1.2-1.7x slower on CPU (measured).
  args = [
    a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
    for a, batched in zip((x, kernel, dy), in_batched, strict=True)
  ]
  outs = [_conv_transpose_2x_grads(*(a[i] for a in args)) for i in range(axis_size)]
  return tuple(jnp.stack(o) for o in zip(*outs, strict=True)), (True, True)


_conv_transpose_2x_phase = _with_grads(_phase_forward, _conv_transpose_2x_grads)


class _Conv4x4(nn.Module):
  """A 4x4 kernel layer, parameters named and initialised as nn.Conv / nn.ConvTranspose's.

  Attributes:
    features: output channels.
    use_bias: add a bias.
    dtype: computation dtype (parameters stay float32).
    impl: 'phase' or 'xla'; equal results and gradients.
    init_scheme: initialisation scheme (`INITS`, see `initializers`).
  """

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  impl: str = "phase"
  init_scheme: str = "dcgan"
  kind = "conv"

  def op(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    fan_in = 16 * (self.features if self.kind == "conv_transpose" else cin)
    kernel_init, bias_init = initializers(self.init_scheme, self.kind, fan_in)
    kernel = self.param("kernel", kernel_init, (4, 4, cin, self.features), jnp.float32)
    bias = None
    if self.use_bias:
      bias = self.param("bias", bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = self.op(x, kernel)
    return y if bias is None else y + bias


class ConvTranspose2x(_Conv4x4):
  """`conv_transpose_2x` as a layer (the generator's); see `_Conv4x4` for attributes."""

  kind = "conv_transpose"

  def op(self, x, kernel):
    return conv_transpose_2x(x, kernel, self.impl)


def _conv_4x4_s2_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _lax_conv_nhwc(jax.lax.conv_general_dilated, x, kernel, padding=1)


def _conv_4x4_s2_grads(x: jax.Array, kernel: jax.Array, dy: jax.Array):
  """(dx, dkernel) of conv_4x4_s2: XLA's weight gradient, dx through the phase form."""
  _, kernel_vjp = jax.vjp(lambda w: _conv_4x4_s2_xla(x, w), kernel)
  (d_kernel,) = kernel_vjp(dy)
  # The input gradient of a 4x4 stride-2 pad-1 convolution is the 2x transposed
  # convolution of dy with the kernel flipped and its in/out channels swapped.
  dx = conv_transpose_2x(dy, _adjoint_kernel(kernel).astype(dy.dtype), "phase")
  return dx.astype(x.dtype), d_kernel


_conv_4x4_s2_phase = _with_grads(_conv_4x4_s2_xla, _conv_4x4_s2_grads)


def conv_4x4_s2(x: jax.Array, kernel: jax.Array, impl: str = "phase") -> jax.Array:
  """4x4, stride-2, padding-1 convolution (the discriminator's): [..., 2h, 2w, cin] ->
  [..., h, w, cout], equal to `nn.Conv(cout, (4, 4), strides=2, padding=1)`.

  impl='phase' keeps XLA's forward convolution and weight gradient but computes the input
  gradient with `conv_transpose_2x` (a custom VJP): XLA:CPU's own input gradient is a
  dilated convolution that ran at a third of the machine's matmul speed. impl='xla' is
  plain autodiff of `lax.conv_general_dilated`.
  """
  if x.shape[-3] % 2 or x.shape[-2] % 2:
    raise ValueError(f"conv_4x4_s2 needs an even height and width, got {x.shape}")
  if impl == "xla":
    return _conv_4x4_s2_xla(x, kernel)
  if impl == "matmul":
    return _conv_4x4_s2_matmul(x, kernel)
  if impl != "phase":
    raise ValueError(f"impl={impl!r} must be one of {CONV_IMPLS}")
  return _conv_4x4_s2_phase(x, kernel)


def _conv_4x4_s2_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv_4x4_s2 as ONE matmul over explicit patches (im2col), differentiated by autodiff.

  Padded by 1, the input's space-to-depth s[i, j, (p, q, c)] = xp[2i + p, 2j + q, c] turns
  the 4x4 stride-2 convolution into a 2x2 stride-1 one: out[i, j] = sum_{u, v in {0, 1}}
  s[i + u, j + v] @ kernel[2u + p, 2v + q], i.e. the 4 shifted copies of s side by side
  times the kernel as a [16 cin, cout] matrix. Its gradients are matmuls and slices too.
  Under `jax.vmap` with per-member kernels (a population) every product is one batched
  matmul, where XLA's convolutions become grouped convolutions (slow on a GPU, measured).
  Costs 4x the input in patches.
  """
  *lead, hh, ww, cin = x.shape
  h, w = hh // 2, ww // 2
  cout = kernel.shape[-1]
  n = len(lead)
  xp = jnp.pad(x, [(0, 0)] * n + [(1, 1), (1, 1), (0, 0)])
  s = xp.reshape(*lead, h + 1, 2, w + 1, 2, cin)
  s = jnp.moveaxis(s, n + 1, n + 2).reshape(*lead, h + 1, w + 1, 4 * cin)  # [.., i, j, (p, q, c)]
  patches = jnp.concatenate(
    [s[..., u : u + h, v : v + w, :] for u in range(2) for v in range(2)], axis=-1
  )  # [..., h, w, (u, v, p, q, c)]
  # kernel[2u + p, 2v + q, c, o] -> [(u, v, p, q, c), o]
  k = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(16 * cin, cout)
  return _matmul_2d(patches, k).astype(jnp.result_type(x, kernel))


class Conv4x4s2(_Conv4x4):
  """`conv_4x4_s2` as a layer (the discriminator's); see `_Conv4x4` for attributes."""

  def op(self, x, kernel):
    return conv_4x4_s2(x, kernel, self.impl)


class Generator(nn.Module):
  """DCGAN generator that also returns its per-layer feature maps.

  Attributes:
    image_size: output height and width (16, 32, 64 or 128).
    width: w, channels of the last hidden layer (the first has 8w).
    channels: image channels.
    dtype: computation dtype (parameters stay float32).
    conv_impl: how the transposed convolutions are computed ('phase' or 'xla'; equal
      results, see `conv_transpose_2x`).
    init_scheme: parameter initialisation scheme (`INITS`; 'dcgan' = N(0, 0.02), see
      `initializers`).
  """

  image_size: int = 64
  width: int = 64
  channels: int = 3
  dtype: Dtype = jnp.float32
  conv_impl: str = "phase"
  init_scheme: str = "dcgan"

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    """Maps z [b, z_dim] to (image [b, s, s, 3] in [-1, 1], features per layer)."""
    norm = lambda: nn.BatchNorm(  # noqa: E731
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      scale_init=batch_norm_scale_init(self.init_scheme),
    )
    conv = lambda ch, **kw: ConvTranspose2x(  # noqa: E731
      ch, dtype=self.dtype, impl=self.conv_impl, init_scheme=self.init_scheme, **kw
    )
    n_layers = num_generator_layers(self.image_size)
    features = []
    ch = 8 * self.width
    kernel_init, _ = initializers(self.init_scheme, "dense", z.shape[-1])
    x = nn.Dense(4 * 4 * ch, use_bias=False, dtype=self.dtype, kernel_init=kernel_init)(
      z.astype(self.dtype)
    )
    x = nn.relu(norm()(x.reshape(z.shape[0], 4, 4, ch)))
    features.append(x)
    for _ in range(n_layers - 2):
      ch //= 2
      x = nn.relu(norm()(conv(ch, use_bias=False)(x)))
      features.append(x)
    x = conv(self.channels)(x)
    image = jnp.tanh(x.astype(jnp.float32))
    features.append(image)
    return image, features


class Discriminator(nn.Module):
  """DCGAN discriminator with k + 1 outputs.

  Attributes:
    k: number of generators; the output has k + 1 logits, index k = real.
    image_size: input height and width.
    width: channels of the first convolution.
    norm: 'spectral' (SN on every layer) or 'batch' (BatchNorm, the DCGAN baseline).
    dtype: computation dtype.
    conv_impl: how the convolutions' input gradients are computed ('phase' or 'xla';
      equal results, see `conv_4x4_s2`).
    init_scheme: parameter initialisation scheme (`INITS`, see `initializers`).
  """

  k: int = 1
  image_size: int = 64
  width: int = 64
  norm: str = "spectral"
  dtype: Dtype = jnp.float32
  conv_impl: str = "phase"
  init_scheme: str = "dcgan"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [b, s, s, c] to logits [b, k + 1].

    Args:
      x: images in [-1, 1].
      train: the discriminator's own update. Updates the spectral-norm power iteration,
        and makes BatchNorm use (and, where the collection is mutable, record) batch
        statistics. With train=False spectral norm uses its stored vectors unchanged.
    """

    def sn(layer):
      # No dtype here: SpectralNorm writes the normalised kernel back at init, so it must
      # stay float32 (the layer itself computes in self.dtype).
      return nn.SpectralNorm(layer, collection_name=SPECTRAL)

    x = x.astype(self.dtype)
    ch = self.width
    for i in range(num_generator_layers(self.image_size) - 1):
      # A bias right before BatchNorm is cancelled by it (zero gradient up to rounding,
      # which Adam would amplify into noise), so BN convs have none, as in PyTorch's DCGAN.
      batch_norm = self.norm != "spectral" and i > 0
      conv = Conv4x4s2(
        ch,
        use_bias=not batch_norm,
        dtype=self.dtype,
        impl=self.conv_impl,
        init_scheme=self.init_scheme,
      )
      if self.norm == "spectral":
        x = sn(conv)(x, update_stats=train)
      else:
        x = conv(x)
        if batch_norm:
          x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            scale_init=batch_norm_scale_init(self.init_scheme),
          )(x)
      x = nn.leaky_relu(x, 0.2)
      ch *= 2
    x = x.reshape(x.shape[0], -1)
    kernel_init, bias_init = initializers(self.init_scheme, "dense", x.shape[-1])
    dense = nn.Dense(self.k + 1, dtype=self.dtype, kernel_init=kernel_init, bias_init=bias_init)
    x = sn(dense)(x, update_stats=train) if self.norm == "spectral" else dense(x)
    return x.astype(jnp.float32)
