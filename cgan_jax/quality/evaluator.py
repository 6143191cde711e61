"""Batched Inception features on device, reference statistics, per-generator IS and FID.

Choices (also in the README):
- Generated samples are quantised to uint8 exactly as exported PNGs would be; the real
  images go through the training preprocessing (resize to `data.image_size`) and the same
  quantisation, so both sides reach Inception by the same path.
- IS uses the logits without the classifier bias (as the original IS code and
  torch-fidelity), 10 splits.
- The reference statistics are of the whole training set (`data.num_train` images when
  set) at the training resolution, cached under a key from the images' bytes, the
  resolution and the weights' sha256.
"""

import dataclasses
import functools
import hashlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from cgan_jax import xla_setup
from cgan_jax.quality import inception, metrics, registry
from cgan_jax.quality import weights as weights_lib

IS_SPLITS = registry.IS_SPLITS
# 2: the reference may also hold its pool3 features (for KID, precision/recall, ...).
STATS_FORMAT = 2


def inception_compiler_options() -> dict | None:
  """`jax.jit(compiler_options=...)` for Inception; None (the defaults) off the CPU.

  On the CPU: the training step's XLA:CPU options (XLA's own convolution kernels instead of
  YNNPACK's: 1.8x the images/s on the 2-core CPU, benchmarks/README.md; same features to
  5e-6), and LLVM's full optimisation (XLA's default level 2) pinned, because Inception is
  compute-bound: where XLA_FLAGS lowers the level for a whole process (the test suite does,
  for its tiny programs), 20 images took 3.7 s instead of 2.1 s.
  """
  options = xla_setup.compiler_options()
  return None if options is None else {**options, xla_setup.OPT_LEVEL: 2}


class InceptionExtractor:
  """Runs the FID Inception on uint8 images in fixed-size (padded) batches.

  Args:
    weights: from `weights.load_weights`.
    batch_size: images per Inception call; a multiple of the device count is sharded.
  """

  def __init__(self, weights: weights_lib.InceptionWeights, batch_size: int = 200):
    xla_setup.enable_compilation_cache()  # Inception, and its small eager ops
    self.weights = weights
    self.batch_size = int(batch_size)
    self.model = inception.InceptionV3(with_logits=weights.has_logits)
    devices = jax.devices()
    if self.batch_size % len(devices) == 0 and len(devices) > 1:
      mesh = jax.sharding.Mesh(np.array(devices), ("data",))
      self._in_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    else:
      self._in_sharding = None
      replicated = None
    self.params = jax.device_put(jax.tree.map(jnp.asarray, weights.params), replicated)

    def features(params, images):
      pool3, _, logits_unbiased = self.model.apply({"params": params}, inception.preprocess(images))
      return pool3, logits_unbiased

    self._fn = jax.jit(features, compiler_options=inception_compiler_options())

  @property
  def has_logits(self) -> bool:
    return self.weights.has_logits

  def __call__(self, images) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 [n <= batch_size, h, w, 3] -> (pool3 [n, 2048], logits [n, 1008] | None)."""
    n = images.shape[0]
    if n < self.batch_size:
      pad = jnp.zeros((self.batch_size - n, *images.shape[1:]), images.dtype)
      images = jnp.concatenate([jnp.asarray(images), pad])
    if self._in_sharding is not None:
      images = jax.device_put(images, self._in_sharding)
    pool3, logits = self._fn(self.params, images)
    pool3 = np.asarray(pool3[:n])
    return pool3, (np.asarray(logits[:n]) if logits is not None else None)

  def many(self, images, should_stop=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Any number of uint8 [n, h, w, 3] images, in calls of `batch_size` (the last padded):
    how the sets of several generators, or of several population members, share each
    Inception pass. `should_stop()` (optional) is asked between the calls: True ends it
    with `EvaluationInterrupted` (a population's latent batch can be many calls)."""
    bs = self.batch_size
    if images.shape[0] <= bs:
      return self(images)
    parts = []
    for i in range(0, images.shape[0], bs):
      if i and should_stop is not None and should_stop():
        raise EvaluationInterrupted(f"after {i} of {images.shape[0]} images of a pack")
      parts.append(self(images[i : i + bs]))
    feats = np.concatenate([f for f, _ in parts])
    logits = [lg for _, lg in parts if lg is not None]
    return feats, (np.concatenate(logits) if logits else None)

  def extract(self, images: np.ndarray, desc: str = "Inception features"):
    """All of `images` (uint8 [n, h, w, 3]) in batches, with a progress bar."""
    feats, logits = [], []
    for start in _progress(range(0, len(images), self.batch_size), desc, len(images), self):
      f, lg = self(images[start : start + self.batch_size])
      feats.append(f)
      if lg is not None:
        logits.append(lg)
    return np.concatenate(feats), (np.concatenate(logits) if logits else None)


def _progress(it, desc, total_images, extractor):
  return progress_bar(it, desc=desc, total=-(-total_images // extractor.batch_size))


def progress_bar(iterable=None, *, desc: str, total: int, unit: str = "batch"):
  """A tqdm bar on a terminal; elsewhere (a log file, a notebook's captured stderr, a CI
  log) one log line every `LOG_PROGRESS_S` seconds instead, since tqdm's carriage returns
  join there into kilobyte-long lines."""
  if sys.stderr.isatty():
    return tqdm(
      iterable,
      desc=desc,
      unit=unit,
      total=total,
      file=sys.stderr,
      leave=False,
      dynamic_ncols=True,
    )
  return LoggedProgress(iterable, desc=desc, total=total, unit=unit)


LOG_PROGRESS_S = 30.0


class LoggedProgress:
  """`progress_bar` off a terminal: iterate over it, or call update(); a context manager."""

  def __init__(self, iterable=None, *, desc: str, total: int, unit: str = "batch"):
    self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
    self.n = 0
    self.start = self.last = time.perf_counter()

  def __iter__(self):
    for item in self.iterable:
      yield item
      self.update()

  def update(self, n: int = 1) -> None:
    self.n += n
    now = time.perf_counter()
    if now - self.last >= LOG_PROGRESS_S and self.n < self.total:
      self.last = now
      rate = self.n / max(now - self.start, 1e-9)
      eta = (self.total - self.n) / max(rate, 1e-9)
      logging.info(
        "%s: %d/%d %s (%.0f%%), %.2f %s/s, ETA %.0f s",
        self.desc, self.n, self.total, f"{self.unit}es" if self.unit.endswith("h") else
        f"{self.unit}s", 100 * self.n / max(self.total, 1), rate, self.unit, eta,
      )  # fmt: skip

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
  mu: np.ndarray
  sigma: np.ndarray
  num_images: int
  description: str
  features: np.ndarray | None = None  # float32 [num_images, 2048], when a metric needs them

  @functools.cached_property
  def sigma_root(self) -> np.ndarray:
    """sigma's square root, computed once and reused by every FID against these stats."""
    return metrics.covariance_root(self.sigma)


def reference_statistics(
  images: np.ndarray,
  image_size: int,
  extractor: InceptionExtractor,
  description: str,
  cache: str | None = None,
  keep_features: bool = False,
  resize=None,
) -> ReferenceStats:
  """Statistics of the real `images` (uint8, native resolution) at `image_size`.

  `resize(images) -> uint8 [n, image_size, image_size, 3]` brings them to `image_size`
  when they are not at it (`run.evaluation.reference_statistics` gives the training
  preprocessing); it is called only when the statistics are not cached.

  Cached in `cache` (default `weights.cache_dir()/fid_stats`) under a key made from the
  images' bytes, `image_size`, the weights' sha256 and the stats format. With
  `keep_features` the pool3 features are kept too (float32, in the cache as well); a cached
  entry without them is then computed again.
  """
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(f"|{images.shape}|{image_size}|{extractor.weights.sha256}|{STATS_FORMAT}".encode())
  key = h.hexdigest()[:24]
  cache = cache or os.path.join(weights_lib.cache_dir(), "fid_stats")
  path = os.path.join(cache, f"{key}.npz")
  if os.path.isfile(path):
    try:
      with np.load(path) as z:
        if not keep_features or "features" in z.files:
          logging.info("Reference statistics from cache %s.", path)
          features = z["features"] if keep_features else None
          return ReferenceStats(
            z["mu"], z["sigma"], int(z["num_images"]), str(z["description"]), features
          )
    except (OSError, ValueError, KeyError) as e:
      logging.warning("Ignoring unreadable reference statistics %s (%s).", path, e)
  if images.shape[1] == image_size:
    real = images
  elif resize is None:
    raise ValueError(f"images are {images.shape[1]} px, not {image_size}, and no resize given")
  else:
    real = resize(images)
  stats = metrics.RunningStats(inception.FEATURE_DIM)
  kept = []
  bs = extractor.batch_size
  for start in _progress(range(0, len(real), bs), "Reference statistics", len(real), extractor):
    feats = extractor(real[start : start + bs])[0]
    stats.update(feats)
    if keep_features:
      kept.append(np.asarray(feats, np.float32))
  features = np.concatenate(kept) if keep_features else None
  ref = ReferenceStats(stats.mu, stats.sigma, stats.count, description, features)
  try:
    os.makedirs(cache, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    extra = {} if features is None else {"features": features}
    np.savez(
      tmp,
      mu=ref.mu,
      sigma=ref.sigma,
      num_images=ref.num_images,
      description=description,
      **extra,
    )
    os.replace(tmp, path)
    total = sum(
      os.path.getsize(os.path.join(cache, n)) for n in os.listdir(cache) if n.endswith(".npz")
    )
    logging.info(
      "Cached the reference statistics at %s (%.1f MB); the cache %s holds %.1f MB in all "
      "(safe to delete: statistics are computed again when missing).",
      path,
      os.path.getsize(path) / 1e6,
      cache,
      total / 1e6,
    )
  except OSError as e:
    logging.warning("Could not cache reference statistics at %s: %s", path, e)
  return ref


class EvaluationInterrupted(Exception):
  """`should_stop` asked an evaluation to end before its last batch."""


def score_image_batches(
  batches,
  num_batches: int,
  k: int,
  extractor: InceptionExtractor,
  reference: "ReferenceStats | list[ReferenceStats]",
  selected: tuple[str, ...] | None = None,
  should_stop=None,
  label: str | None = None,
) -> list[dict[str, float]]:
  """The selected metrics (default: FID, and IS where the weights have logits) of k image
  sets that arrive as `batches`, an iterable of uint8 [k, n, h, w, 3] (one batch of each
  set at a time, e.g. the k generators' samples of one latent batch, or those of every
  generator of several population members). The images go through Inception in full
  calls of the extractor's batch size, packed across batches (only the last is padded).

  `reference` is one `ReferenceStats` for every set, or a list with one per set (runs
  with references of their own, e.g. synthetic images of their own seeds). `label`
  names the sets in the progress bar (default: "k generator(s)").

  `should_stop()` (optional) is asked between batches; when it says True the evaluation
  ends at once with `EvaluationInterrupted` (a preempted job must not wait for minutes of
  Inception on a CPU).

  Returns:
    One plain mapping per set (`generator_scores`), e.g. {"fid": ...} and, where the
    weights have logits, {"is": ..., "is_std": ...}: the keys of the metric registry
    (`cgan_jax.quality.registry`), which logging, `scores.jsonl`, the best checkpoint and
    the search read.
  """
  if selected is None:
    selected = registry.parse("auto", has_logits=extractor.has_logits)
  keep_features = registry.FEATURES in registry.needs(selected)
  stats = [metrics.RunningStats(inception.FEATURE_DIM) for _ in range(k)]
  features: list[list[np.ndarray]] = [[] for _ in range(k)]
  logits: list[list[np.ndarray]] = [[] for _ in range(k)]
  names = "/".join(registry.METRICS[n].label for n in selected)
  bar = progress_bar(desc=f"{names} of {label or f'{k} generator(s)'}", total=num_batches)
  # Inception runs on full calls of `extractor.batch_size` images, packed across latent
  # batches (a latent batch of k sets of n images rarely fills one: the smoke config's
  # 3 x 20 images padded to 200 wasted 70% of the work); each set's statistics are still
  # updated with exactly its n images of each latent batch, in order, so the scores do not
  # depend on how the images were packed.
  bs = extractor.batch_size
  queue: list = []  # uint8 [k * n, h, w, 3] per latent batch, not yet through Inception
  queued = 0
  segments: list[tuple[int, int]] = []  # (set, rows) in the order the images were queued
  done_feats: list[np.ndarray] = []
  done_logits: list[np.ndarray] = []

  def run_inception(count: int) -> None:
    nonlocal queue, queued
    flat = queue[0] if len(queue) == 1 else jnp.concatenate([jnp.asarray(q) for q in queue])
    feats, lg = extractor.many(flat[:count], should_stop)
    queue = [flat[count:]] if count < flat.shape[0] else []
    queued -= count
    done_feats.append(feats)
    if lg is not None:
      done_logits.append(lg)

  def distribute() -> None:
    feats = np.concatenate(done_feats) if len(done_feats) > 1 else done_feats[0]
    lgs = None
    if done_logits:
      lgs = np.concatenate(done_logits) if len(done_logits) > 1 else done_logits[0]
    start = 0
    while segments and start + segments[0][1] <= feats.shape[0]:
      g, n = segments.pop(0)
      part = feats[start : start + n]
      stats[g].update(part)
      if keep_features:
        features[g].append(np.asarray(part, np.float32))
      if lgs is not None:
        logits[g].append(lgs[start : start + n])
      start += n
    done_feats[:] = [feats[start:]] if start < feats.shape[0] else []
    if lgs is not None:
      done_logits[:] = [lgs[start:]] if start < lgs.shape[0] else []

  with bar:
    for i, images in enumerate(batches):
      if should_stop is not None and should_stop():
        raise EvaluationInterrupted(f"after {i} of {num_batches} batches")
      n = images.shape[1]
      queue.append(images.reshape(k * n, *images.shape[2:]))
      queued += k * n
      segments.extend((g, n) for g in range(k))
      if queued >= bs:
        run_inception(queued - queued % bs)
        distribute()
      bar.update()
    if queued:
      run_inception(queued)
      distribute()
  references = reference if isinstance(reference, list | tuple) else [reference] * k
  if len(references) != k:
    raise ValueError(f"{len(references)} references for {k} image sets")
  return [
    generator_scores(
      stats[g],
      np.concatenate(logits[g]) if logits[g] else None,
      references[g],
      selected,
      np.concatenate(features[g]) if features[g] else None,
    )
    for g in range(k)
  ]


def generator_scores(
  stats: metrics.RunningStats,
  logits: np.ndarray | None,
  reference: ReferenceStats,
  selected: tuple[str, ...] | None = None,
  features: np.ndarray | None = None,
) -> dict[str, float]:
  """One generator's metrics (`selected`, default FID and IS where there are logits)."""
  if selected is None:
    selected = registry.parse("auto", has_logits=logits is not None)
  generated = registry.Generated(stats, features, logits)
  return registry.compute(selected, generated, reference)


def format_table(scores: list[dict[str, float]], header: str) -> str:
  """A plain-text table, one row per generator, numbered G1..Gk as in the paper; a column
  per metric the scores hold, in the registry's order (IS first, as the paper)."""
  shown = ["is", "fid", *(n for n in registry.names() if any(n in s for s in scores))]
  shown = list(dict.fromkeys(shown))  # IS and FID always ('unavailable' without logits)
  widths = [18 if any(f"{n}_std" in s for s in scores) else 10 for n in shown]
  lines = [
    header,
    f"{'generator':>9}"
    + "".join(f"  {registry.METRICS[n].label:>{w}}" for n, w in zip(shown, widths, strict=True)),
  ]
  for g, s in enumerate(scores):
    cells = [registry.format_value(s, n) for n in shown]
    lines.append(
      f"{'G' + str(g + 1):>9}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
    )
  return "\n".join(lines)
