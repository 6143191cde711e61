"""Generating images from a state: sample grids, exports and evaluation inputs."""

import io
import math
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def make_generate_fn(generator):
  """Returns jitted generate(g_params, g_batch_stats, z) -> uint8 [k, b, h, w, 3].

  Generators run in inference mode (BatchNorm running statistics). Every generator gets
  the same z, as in the paper's Figure 5.
  """

  @jax.jit
  def generate(g_params, g_batch_stats, z):
    def one(p, s):
      image, _ = generator.apply({"params": p, "batch_stats": s}, z, train=False)
      return image

    images = jax.vmap(one)(g_params, g_batch_stats)
    return to_uint8(images)

  return generate


def to_uint8(images: jax.Array) -> jax.Array:
  """[-1, 1] floats -> uint8 with round-to-nearest."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def latents(key: jax.Array, num: int, z_dim: int) -> jax.Array:
  """Fixed latents: [num, z_dim] standard normal from `key`."""
  return jax.random.normal(key, (num, z_dim), jnp.float32)


def generate_all(generate_fn, g_params, g_batch_stats, key, num, z_dim, batch_size):
  """uint8 [k, num, h, w, 3] from `num` latents drawn from `key` (batched).

  Latent n is the n-th row of `latents(key, num, z_dim)`, independent of `batch_size`.
  """
  z = latents(key, num, z_dim)
  chunks = []
  for start in range(0, num, batch_size):
    zb = z[start : start + batch_size]
    pad = batch_size - zb.shape[0]
    if pad:  # keep one compiled shape
      zb = jnp.concatenate([zb, jnp.zeros((pad, z_dim), zb.dtype)])
    out = np.asarray(generate_fn(g_params, g_batch_stats, zb))
    chunks.append(out[:, : batch_size - pad])
  return np.concatenate(chunks, axis=1)


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
  """uint8 [n, h, w, c] -> one uint8 [H, W, c] grid image."""
  n, h, w, c = images.shape
  cols = cols or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, cols)
    grid[
      pad + r * (h + pad) : pad + r * (h + pad) + h,
      pad + col * (w + pad) : pad + col * (w + pad) + w,
    ] = images[i]
  return grid


def save_png(array: np.ndarray, path: str) -> None:
  Image.fromarray(array).save(path, format="PNG")


def save_npz_deterministic(path: str, **arrays: np.ndarray) -> None:
  """Like np.savez, but with fixed zip timestamps so equal arrays give equal bytes."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
    for name, arr in arrays.items():
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      zf.writestr(info, buf.getvalue())
