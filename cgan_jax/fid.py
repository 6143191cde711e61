"""FID between two image sets, like pytorch-fid's CLI.

  python -m cgan_jax.fid PATH_A PATH_B [--weights=auto|fid_helper|FILE] [--batch_size=100]

Each path is a folder of images (png/jpg/jpeg/bmp/webp, searched recursively), an `.npz`
holding `images` (uint8 [N, H, W, 3], or [k, N, H, W, 3] for one score per generator),
or an `.npz` of statistics (`mu`, `sigma`, e.g. written by `--save_stats`). The last line
printed is `FID: <value>`. With per-generator sets (on either side), one `FID G<i>: <value>`
line per generator comes first and the last line is the lowest of them (the paper reports
the best generator).
"""

import os

import numpy as np
from absl import flags
from PIL import Image

from cgan_jax import cli
from cgan_jax.errors import ConfigError
from cgan_jax.quality import evaluator, metrics
from cgan_jax.quality import weights as weights_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so that the CLI modules can be imported together."""
  flags.DEFINE_string("weights", "auto", "'auto', 'full', 'fid_helper', or a weights file.")
  flags.DEFINE_integer("batch_size", 100, "Inception batch size.")
  flags.DEFINE_string("save_stats", None, "Also write PATH_A's statistics to this .npz.")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_folder(path: str) -> np.ndarray:
  """uint8 [N, H, W, 3] from every image under `path` (sorted; all the same size)."""
  files = sorted(
    os.path.join(root, f)
    for root, _, names in os.walk(path)
    for f in names
    if f.lower().endswith(IMAGE_EXTENSIONS)
  )
  if not files:
    raise ConfigError(f"{path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  images = [np.asarray(Image.open(f).convert("RGB"), np.uint8) for f in files]
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ConfigError(f"{path!r}: images differ in size ({sorted(shapes)[:3]}...); resize them")
  return np.stack(images)


def load_set(path: str):
  """('images', uint8 [k, N, H, W, 3]) or ('stats', (mu, sigma)) for a CLI path."""
  if os.path.isdir(path):
    return "images", load_folder(path)[None]
  if not os.path.isfile(path):
    raise ConfigError(f"{path!r} is neither a folder of images nor an .npz file")
  if not path.endswith(".npz"):
    raise ConfigError(f"{path!r}: expected a folder of images or an .npz file")
  try:
    with np.load(path) as z:
      if "mu" in z.files and "sigma" in z.files:
        return "stats", (z["mu"], z["sigma"])
      if "images" not in z.files:
        raise ConfigError(f"{path!r} holds neither 'images' nor 'mu'/'sigma' (has {z.files})")
      images = z["images"]
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path!r} is not a readable .npz ({e})") from None
  if images.dtype != np.uint8 or images.ndim not in (4, 5) or images.shape[-1] != 3:
    raise ConfigError(
      f"{path!r}: 'images' must be uint8 [N, H, W, 3] or [k, N, H, W, 3], got "
      f"{images.dtype} {list(images.shape)}"
    )
  return "images", images if images.ndim == 5 else images[None]


def set_statistics(kind, value, extractor, name):
  if kind == "stats":
    return [value]
  out = []
  for g, images in enumerate(value):
    if len(images) < 2:
      raise ConfigError(f"{name}: FID needs at least 2 images, got {len(images)}")
    feats, _ = extractor.extract(images, desc=f"{name}" + (f" G{g + 1}" if len(value) > 1 else ""))
    out.append(metrics.statistics(feats))
  return out


def compute(
  path_a: str, path_b: str, weights: str = "auto", batch_size: int = 100, save_stats=None
):
  """FIDs of every set in `path_a` against `path_b` (a list, one per generator)."""
  if batch_size < 1:
    raise ConfigError(f"--batch_size={batch_size} must be >= 1")
  sets = [load_set(path_a), load_set(path_b)]
  extractor = None
  if any(kind == "images" for kind, _ in sets):
    w = weights_lib.load_weights_for_cli(weights)
    print(f"Inception: {w.name}")
    extractor = evaluator.InceptionExtractor(w, batch_size)
  names = [os.path.basename(p.rstrip("/")) for p in (path_a, path_b)]
  sizes = [len(value) if kind == "images" else 1 for kind, value in sets]
  if min(sizes) > 1:
    raise ConfigError(
      f"{path_a!r} and {path_b!r} both hold several generators' images ([k, N, H, W, 3]); "
      "give one of them as a single set (real images, or statistics)"
    )
  stats_a = set_statistics(*sets[0], extractor, names[0])
  stats_b = set_statistics(*sets[1], extractor, names[1])
  if save_stats:
    mu, sigma = stats_a[0]
    np.savez(save_stats, mu=mu, sigma=sigma)
  # One FID per generator whichever side holds them (FID is symmetric).
  many, (one,) = (stats_a, stats_b) if len(stats_a) >= len(stats_b) else (stats_b, stats_a)
  root = metrics.covariance_root(one[1])  # once, for every generator's set
  return [metrics.frechet_distance(mu, sigma, *one, sigma2_root=root) for mu, sigma in many]


def main(argv):
  if len(argv) != 3:
    cli.fail("usage: python -m cgan_jax.fid PATH_A PATH_B [--weights=...] [--batch_size=...]")
  fids = compute(argv[1], argv[2], FLAGS.weights, FLAGS.batch_size, FLAGS.save_stats)
  if len(fids) > 1:
    for g, v in enumerate(fids):
      print(f"FID G{g + 1}: {v:.6f}")
    print(f"(lowest: G{int(np.argmin(fids)) + 1})")
  print(f"FID: {min(fids):.6f}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
