"""FID between two image sets, like pytorch-fid's CLI.

  python -m cgan_jax.fid PATH_A PATH_B [--weights=auto|fid_helper|FILE] [--batch_size=100]
      [--metrics=fid,is,kid,precision,recall,density,coverage]

Each path is a folder of images (png/jpg/jpeg/bmp/webp, searched recursively), an `.npz`
holding `images` (uint8 [N, H, W, 3], or [k, N, H, W, 3] for one score per generator),
or an `.npz` of statistics (`mu`, `sigma`, e.g. written by `--save_stats`). The last line
printed is `FID: <value>`. With per-generator sets (on either side), one `FID G<i>: <value>`
line per generator comes first and the last line is the lowest of them (the paper reports
the best generator).

`--metrics` (default `fid`) picks metrics of the registry (`cgan_jax.quality.registry`):
one `NAME: value` line each (`value ± std` where the metric has a spread: IS, KID), in the
order given; with several generators, per-generator lines first and the best generator's
value last. PATH_A is the generated set and PATH_B the reference (or, when one path holds
several generators, that one is generated): precision, recall, density and coverage are
not symmetric. They and KID need images on both sides; IS needs the full weights.
"""

import dataclasses
import os

import numpy as np
from absl import flags
from PIL import Image

from cgan_jax import cli
from cgan_jax.errors import ConfigError
from cgan_jax.quality import evaluator, metrics, registry
from cgan_jax.quality import weights as weights_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so that the CLI modules can be imported together."""
  flags.DEFINE_string("weights", "auto", "'auto', 'full', 'fid_helper', or a weights file.")
  flags.DEFINE_integer("batch_size", 100, "Inception batch size.")
  flags.DEFINE_string("save_stats", None, "Also write PATH_A's statistics to this .npz.")
  flags.DEFINE_string(
    "metrics",
    "fid",
    "Comma-separated metrics of the registry: fid, is, kid, precision, recall, density, "
    "coverage ('auto': FID, and IS with the full weights).",
  )


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


@dataclasses.dataclass
class _Stats:
  """The mean and covariance of a set given as statistics (an .npz of `mu`, `sigma`)."""

  mu: np.ndarray
  sigma: np.ndarray

  def factor(self):
    return None


def set_outputs(kind, value, extractor, name, keep_features=False):
  """One `registry.Generated` per set of a CLI path (Inception run on images)."""
  if kind == "stats":
    return [registry.Generated(_Stats(*value))]
  out = []
  for g, images in enumerate(value):
    if len(images) < 2:
      raise ConfigError(f"{name}: FID needs at least 2 images, got {len(images)}")
    feats, logits = extractor.extract(
      images, desc=f"{name}" + (f" G{g + 1}" if len(value) > 1 else "")
    )
    stats = metrics.RunningStats(feats.shape[1])
    stats.update(feats)
    out.append(
      registry.Generated(stats, np.asarray(feats, np.float32) if keep_features else None, logits)
    )
  return out


def compute_metrics(
  path_a: str,
  path_b: str,
  weights: str = "auto",
  batch_size: int = 100,
  save_stats=None,
  metric_names="fid",
) -> list[dict[str, float]]:
  """The metrics (`--metrics`) of every generated set against the reference, one mapping
  per set. The generated side is the one with several sets ([k, N, H, W, 3]); otherwise
  PATH_A is generated and PATH_B the reference (torch-fidelity's input1/input2): FID and
  KID are symmetric, precision/recall and density/coverage are not, IS is of PATH_A alone."""
  if batch_size < 1:
    raise ConfigError(f"--batch_size={batch_size} must be >= 1")
  registry.parse(metric_names, "--metrics")  # the names, before any weights are loaded
  sets = [load_set(path_a), load_set(path_b)]
  extractor = None
  has_logits = True
  if any(kind == "images" for kind, _ in sets):
    w = weights_lib.load_weights_for_cli(weights)
    print(f"Inception: {w.name}")
    extractor = evaluator.InceptionExtractor(w, batch_size)
    has_logits = w.has_logits
  selected = registry.parse(metric_names, "--metrics", has_logits)
  need = registry.needs(selected)
  names = [os.path.basename(p.rstrip("/")) for p in (path_a, path_b)]
  sizes = [len(value) if kind == "images" else 1 for kind, value in sets]
  if min(sizes) > 1:
    raise ConfigError(
      f"{path_a!r} and {path_b!r} both hold several generators' images ([k, N, H, W, 3]); "
      "give one of them as a single set (real images, or statistics)"
    )
  gen, ref = (0, 1) if sizes[0] >= sizes[1] else (1, 0)
  keep = bool(need & {registry.FEATURES, registry.REFERENCE_FEATURES})
  for i, (kind, _) in enumerate(sets):
    if kind == "stats" and (keep or (i == gen and registry.LOGITS in need)):
      raise ConfigError(
        f"--metrics={','.join(selected)}: {[path_a, path_b][i]!r} holds statistics only; "
        "these metrics need images (FID alone works from statistics)"
      )
  outs = [set_outputs(*sets[i], extractor, names[i], keep) for i in (0, 1)]
  if save_stats:
    first = outs[0][0].stats
    np.savez(save_stats, mu=first.mu, sigma=first.sigma)
  (one,) = outs[ref]
  reference = evaluator.ReferenceStats(
    one.stats.mu, one.stats.sigma, 0, names[ref], one.features
  )  # sigma_root: once, for every generator's set
  return [registry.compute(selected, g, reference) for g in outs[gen]]


def compute(
  path_a: str, path_b: str, weights: str = "auto", batch_size: int = 100, save_stats=None
):
  """FIDs of every set in `path_a` against `path_b` (a list, one per generator)."""
  scores = compute_metrics(path_a, path_b, weights, batch_size, save_stats, "fid")
  return [s["fid"] for s in scores]


def main(argv):
  if len(argv) != 3:
    cli.fail(
      "usage: python -m cgan_jax.fid PATH_A PATH_B [--weights=...] [--batch_size=...] "
      "[--metrics=...]"
    )
  scores = compute_metrics(
    argv[1], argv[2], FLAGS.weights, FLAGS.batch_size, FLAGS.save_stats, FLAGS.metrics
  )
  order = [n for n in registry.parse(FLAGS.metrics, "--metrics") if n in scores[0]]
  for name in order:
    m = registry.METRICS[name]
    label = m.label
    if len(scores) > 1:
      for g, s in enumerate(scores):
        print(f"{label} G{g + 1}: {registry.format_value(s, name, 6)}")
      best = max(
        range(len(scores)), key=lambda g: scores[g][name] * (1 if m.direction == "max" else -1)
      )
      word = "highest" if m.direction == "max" else "lowest"
      print(f"({word} {label}: G{best + 1})")
    else:
      best = 0
    print(f"{label}: {registry.format_value(scores[best], name, 6)}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
