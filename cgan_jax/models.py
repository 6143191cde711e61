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
`ConvTranspose2d(kernel_size=4, stride=2, padding=1)`, so the output is exactly 2x.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SUPPORTED_IMAGE_SIZES = (16, 32, 64, 128)
D_NORMS = ("spectral", "batch")
SPECTRAL = "spectral"  # collection of the spectral-norm power-iteration state

Dtype = Any


def num_generator_layers(image_size: int) -> int:
  """Number of generator layers, counting the projection of z and the output layer."""
  return int(math.log2(image_size // 4)) + 1


class Generator(nn.Module):
  """DCGAN generator that also returns its per-layer feature maps.

  Attributes:
    image_size: output height and width (16, 32, 64 or 128).
    width: w, channels of the last hidden layer (the first has 8w).
    channels: image channels.
    dtype: computation dtype (parameters stay float32).
  """

  image_size: int = 64
  width: int = 64
  channels: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    """Maps z [b, z_dim] to (image [b, s, s, 3] in [-1, 1], features per layer)."""
    norm = lambda: nn.BatchNorm(  # noqa: E731
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
    )
    n_layers = num_generator_layers(self.image_size)
    features = []
    ch = 8 * self.width
    x = nn.Dense(4 * 4 * ch, use_bias=False, dtype=self.dtype)(z.astype(self.dtype))
    x = nn.relu(norm()(x.reshape(z.shape[0], 4, 4, ch)))
    features.append(x)
    for _ in range(n_layers - 2):
      ch //= 2
      x = nn.ConvTranspose(
        ch, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=False, dtype=self.dtype
      )(x)
      x = nn.relu(norm()(x))
      features.append(x)
    x = nn.ConvTranspose(
      self.channels, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), dtype=self.dtype
    )(x)
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
  """

  k: int = 1
  image_size: int = 64
  width: int = 64
  norm: str = "spectral"
  dtype: Dtype = jnp.float32

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
      conv = nn.Conv(
        ch,
        (4, 4),
        strides=(2, 2),
        padding=((1, 1), (1, 1)),
        use_bias=not batch_norm,
        dtype=self.dtype,
      )
      if self.norm == "spectral":
        x = sn(conv)(x, update_stats=train)
      else:
        x = conv(x)
        if batch_norm:
          x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
          )(x)
      x = nn.leaky_relu(x, 0.2)
      ch *= 2
    x = x.reshape(x.shape[0], -1)
    dense = nn.Dense(self.k + 1, dtype=self.dtype)
    x = sn(dense)(x, update_stats=train) if self.norm == "spectral" else dense(x)
    return x.astype(jnp.float32)
