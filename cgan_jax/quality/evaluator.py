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
import datetime
import functools
import hashlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from cgan_jax import configlib
from cgan_jax.errors import ConfigError
from cgan_jax.quality import inception, metrics
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import builder, generate, input_pipeline, parallel

IS_SPLITS = 10
STATS_FORMAT = 1


def inception_compiler_options() -> dict | None:
  """`jax.jit(compiler_options=...)` for Inception; None (the defaults) off the CPU.

  On the CPU: the training step's XLA:CPU options (XLA's own convolution kernels instead of
  YNNPACK's: 1.8x the images/s on the 2-core CPU, benchmarks/README.md; same features to
  5e-6), and LLVM's full optimisation (XLA's default level 2) pinned, because Inception is
  compute-bound: where XLA_FLAGS lowers the level for a whole process (the test suite does,
  for its tiny programs), 20 images took 3.7 s instead of 2.1 s.
  """
  options = parallel.compiler_options()
  return None if options is None else {**options, parallel.OPT_LEVEL: 2}


class InceptionExtractor:
  """Runs the FID Inception on uint8 images in fixed-size (padded) batches.

  Args:
    weights: from `weights.load_weights`.
    batch_size: images per Inception call; a multiple of the device count is sharded.
  """

  def __init__(self, weights: weights_lib.InceptionWeights, batch_size: int = 200):
    builder.enable_compilation_cache()  # Inception, and its small eager ops
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
  return tqdm(
    it,
    desc=desc,
    unit="batch",
    total=-(-total_images // extractor.batch_size),
    file=sys.stderr,
    leave=False,
    dynamic_ncols=True,
  )


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
  mu: np.ndarray
  sigma: np.ndarray
  num_images: int
  description: str

  @functools.cached_property
  def sigma_root(self) -> np.ndarray:
    """sigma's square root, computed once and reused by every FID against these stats."""
    return metrics.covariance_root(self.sigma)


def real_images_at_resolution(images: np.ndarray, image_size: int, batch: int = 1000):
  """uint8 [n, h, w, 3] -> uint8 [n, image_size, image_size, 3] via the training resize."""
  if images.shape[1] == image_size:
    return images
  resize = jax.jit(lambda x: generate.to_uint8(input_pipeline.preprocess(x, image_size)))
  return np.concatenate(
    [np.asarray(resize(images[i : i + batch])) for i in range(0, len(images), batch)]
  )


def reference_statistics(
  images: np.ndarray,
  image_size: int,
  extractor: InceptionExtractor,
  description: str,
  cache: str | None = None,
) -> ReferenceStats:
  """Statistics of the real `images` (uint8, native resolution) at `image_size`.

  Cached in `cache` (default `weights.cache_dir()/fid_stats`) under a key made from the
  images' bytes, `image_size`, the weights' sha256 and the stats format.
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
        logging.info("Reference statistics from cache %s.", path)
        return ReferenceStats(z["mu"], z["sigma"], int(z["num_images"]), str(z["description"]))
    except (OSError, ValueError, KeyError) as e:
      logging.warning("Ignoring unreadable reference statistics %s (%s).", path, e)
  real = real_images_at_resolution(images, image_size)
  stats = metrics.RunningStats(inception.FEATURE_DIM)
  bs = extractor.batch_size
  for start in _progress(range(0, len(real), bs), "Reference statistics", len(real), extractor):
    stats.update(extractor(real[start : start + bs])[0])
  ref = ReferenceStats(stats.mu, stats.sigma, stats.count, description)
  try:
    os.makedirs(cache, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, mu=ref.mu, sigma=ref.sigma, num_images=ref.num_images, description=description)
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("Could not cache reference statistics at %s: %s", path, e)
  return ref


class EvaluationInterrupted(Exception):
  """`should_stop` asked an evaluation to end before its last batch."""


def score_generators(
  generate_fn,
  g_params,
  g_batch_stats,
  key: jax.Array,
  num_samples: int,
  z_dim: int,
  extractor: InceptionExtractor,
  reference: ReferenceStats,
  batch_size: int,
  should_stop=None,
) -> list[dict[str, float]]:
  """IS and FID of every generator on `num_samples` samples each.

  `should_stop()` (optional) is asked between Inception batches; when it says True the
  evaluation ends at once with `EvaluationInterrupted` (a preempted job must not wait for
  minutes of Inception on a CPU).

  Latents come from `key` in batches of `batch_size` (batch i uses `fold_in(key, i)`);
  every generator gets the same latents.

  Returns:
    One plain mapping per generator (`generator_scores`): {"fid": ...} and, where the
    weights have logits, {"is": ..., "is_std": ...}. Logging, `scores.jsonl`, the best
    checkpoint and the search read these keys, so a new metric is added here alone.
  """
  probe = generate_fn(g_params, g_batch_stats, generate.latents(key, 1, z_dim))
  k = probe.shape[0]
  stats = [metrics.RunningStats(inception.FEATURE_DIM) for _ in range(k)]
  logits: list[list[np.ndarray]] = [[] for _ in range(k)]
  per_call = max(1, extractor.batch_size // k)
  chunk = min(batch_size, per_call)
  batches = range(-(-num_samples // chunk))
  bar = tqdm(
    batches, desc=f"IS/FID of {k} generator(s)", unit="batch", file=sys.stderr, leave=False
  )
  for i in bar:
    if should_stop is not None and should_stop():
      bar.close()
      raise EvaluationInterrupted(f"after {i} of {len(batches)} batches")
    n = min(chunk, num_samples - i * chunk)
    z = generate.latents(jax.random.fold_in(key, i), n, z_dim)
    images = generate_fn(g_params, g_batch_stats, z)  # uint8 [k, n, h, w, 3]
    feats, lg = extractor(images.reshape(k * n, *images.shape[2:]))
    for g in range(k):
      stats[g].update(feats[g * n : (g + 1) * n])
      if lg is not None:
        logits[g].append(lg[g * n : (g + 1) * n])
  return [
    generator_scores(stats[g], np.concatenate(logits[g]) if logits[g] else None, reference)
    for g in range(k)
  ]


def generator_scores(
  stats: metrics.RunningStats, logits: np.ndarray | None, reference: ReferenceStats
) -> dict[str, float]:
  """One generator's metrics from its Inception statistics (and logits, for IS)."""
  factor = stats.factor()  # fewer samples than features: no root of the reference needed
  root = None if factor is not None else reference.sigma_root
  fid = metrics.frechet_distance(
    stats.mu, stats.sigma, reference.mu, reference.sigma, sigma2_root=root, factor1=factor
  )
  out = {"fid": float(fid)}
  if logits is not None:
    is_mean, is_std = metrics.inception_score(logits, IS_SPLITS)
    out.update({"is": float(is_mean), "is_std": float(is_std)})
  return out


def format_table(scores: list[dict[str, float]], header: str) -> str:
  """A plain-text table, one row per generator, numbered G1..Gk as in the paper."""
  lines = [header, f"{'generator':>9}  {'IS':>16}  {'FID':>9}"]
  for g, s in enumerate(scores):
    is_text = f"{s['is']:.3f} ± {s['is_std']:.3f}" if "is" in s else "unavailable"
    lines.append(f"{'G' + str(g + 1):>9}  {is_text:>16}  {s['fid']:9.3f}")
  return "\n".join(lines)


def describe_reference(config, num_images: int) -> str:
  source = {"tfds": "CIFAR-10 train (tfds)", "cifar_archive": "CIFAR-10 train (archive)"}
  name = source.get(config.data.source, f"{config.data.source} images")
  s = config.data.image_size
  return f"{name}, {num_images} images at {s}x{s}"


class TrainingEvaluator:
  """What `train.py` calls every `eval.every_epochs`; built by `make_training_evaluator`."""

  def __init__(self, config, images: np.ndarray, extractor: InceptionExtractor):
    self.config = config
    self.images = images
    self.extractor = extractor
    self._reference = None
    self.selection = selection(configlib.eval_select(config), extractor.weights)

  def select_value(self, scores: list[dict[str, float]]) -> float:
    """The best checkpoint's criterion over the generators: the best of their values."""
    metric, mode = self.selection
    values = [s[metric] for s in scores]
    return max(values) if mode == "max" else min(values)

  @property
  def reference(self) -> ReferenceStats:
    """Statistics of the first `config.eval.num_reference` training images (0: all)."""
    if self._reference is None:
      n = self.config.eval.get("num_reference", 0) or len(self.images)
      images = self.images[:n]
      description = describe_reference(self.config, len(images))
      if len(images) < len(self.images):
        description += f" (the first {len(images)} of {len(self.images)})"
      self._reference = reference_statistics(
        images, self.config.data.image_size, self.extractor, description
      )
    return self._reference

  def evaluate(
    self, generate_fn, state, key, num_samples: int, should_stop=None
  ) -> list[dict[str, float]]:
    """Scores of every generator of `state` (see `score_generators`, also for should_stop)."""
    return score_generators(
      generate_fn,
      state.g_params,
      state.g_batch_stats,
      key,
      num_samples,
      self.config.model.z_dim,
      self.extractor,
      self.reference,
      self.config.eval.batch_size,
      should_stop,
    )

  def record(self, scores: list[dict[str, float]], *, step: int, epoch: int, num_samples: int):
    """One `scores.jsonl` line (see `cgan_jax.run.scores`) for these scores, with provenance."""
    return {
      "step": int(step),
      "epoch": int(epoch),
      "generators": [dict(s) for s in scores],
      "num_samples": int(num_samples),
      "weights": self.extractor.weights.name,
      "weights_sha256": self.extractor.weights.sha256,
      "reference": self.reference.description,
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

  def header(self, num_samples: int, step: int) -> str:
    return (
      f"Step {step}: {num_samples} samples per generator; reference: "
      f"{self.reference.description}; Inception: {self.extractor.weights.name}"
    )


def selection(select: str, weights: weights_lib.InceptionWeights) -> tuple[str, str]:
  """(metric, mode) of the best checkpoint for config.eval.select and these weights.

  Raises:
    ConfigError: the selected metric needs logits that the weights do not have.
  """
  chosen = configlib.parse_select(select)
  if chosen is None:  # auto: the paper's "highest point of IS", else the best FID
    return ("is", "max") if weights.has_logits else ("fid", "min")
  if chosen[0] == "is" and not weights.has_logits:
    raise ConfigError(
      f"config.eval.select={select!r} needs IS, but the Inception weights {weights.name} "
      "have no logits; use 'fid:min' or 'auto', or the full weights"
    )
  return chosen


def make_training_evaluator(config, images: np.ndarray) -> TrainingEvaluator | None:
  """The evaluator for a run, or None (with the reason logged) when metrics are off."""
  if not config.eval.enabled:
    logging.info("IS/FID are off (config.eval.enabled=False).")
    return None
  try:
    weights = weights_lib.load_weights(config.eval.inception_weights)
  except weights_lib.WeightsUnavailable as e:
    logging.warning(
      "IS/FID are off: no Inception weights (%s). To turn them on offline, put %s at %s "
      "or set config.eval.inception_weights=PATH.",
      e,
      weights_lib.FULL_FILENAME,
      weights_lib.expected_full_path(),
    )
    return None
  if not weights.has_logits:
    logging.warning(
      "IS is unavailable: %s has no classifier logits; only FID is computed. For IS, put "
      "%s at %s or set config.eval.inception_weights=PATH.",
      weights.name,
      weights_lib.FULL_FILENAME,
      weights_lib.expected_full_path(),
    )
  return TrainingEvaluator(config, images, InceptionExtractor(weights, config.eval.batch_size))
