"""The training runs' evaluation: the glue between a run and `cgan_jax.quality`.

`quality/` scores batches of images against a reference; this module generates each
generator's samples from a run's state, brings the real images to the training
resolution, chooses the sample counts and reference from the run's config, picks the
best checkpoint's metric and writes the `scores.jsonl` records (`TrainingEvaluator`,
built by `make_training_evaluator`). `evaluate`, `train` and `population` use it.
"""

import datetime
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cgan_jax import configlib
from cgan_jax.errors import ConfigError
from cgan_jax.quality import evaluator as quality
from cgan_jax.quality import registry
from cgan_jax.quality import weights as weights_lib
from cgan_jax.quality.evaluator import (  # noqa: F401 - re-exported for the run's callers
  IS_SPLITS,
  EvaluationInterrupted,
  InceptionExtractor,
  ReferenceStats,
  format_table,
  generator_scores,
)
from cgan_jax.run import generate, input_pipeline


def real_images_at_resolution(images: np.ndarray, image_size: int, batch: int = 1000):
  """uint8 [n, h, w, 3] -> uint8 [n, image_size, image_size, 3] via the training resize."""
  if images.shape[1] == image_size:
    return images
  resize = jax.jit(lambda x: generate.to_uint8(input_pipeline.preprocess(x, image_size)))
  return np.concatenate(
    [np.asarray(resize(images[i : i + batch])) for i in range(0, len(images), batch)]
  )


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
  selected: tuple[str, ...] | None = None,
) -> list[dict[str, float]]:
  """The selected metrics (default: FID, and IS where the weights have logits) of every
  generator on `num_samples` samples each (`quality.evaluator.score_image_batches`, also
  for `should_stop`).

  Latents come from `key` in batches of `min(batch_size, extractor.batch_size // k)`
  (batch i uses `fold_in(key, i)`); every generator gets the same latents.
  """
  return score_members(
    generate_fn,
    [(g_params, g_batch_stats, key)],
    num_samples,
    z_dim,
    extractor,
    reference,
    batch_size,
    should_stop,
    selected,
  )[0]


def score_members(
  generate_fn,
  members,
  num_samples: int,
  z_dim: int,
  extractor: InceptionExtractor,
  reference: ReferenceStats,
  batch_size: int,
  should_stop=None,
  selected: tuple[str, ...] | None = None,
) -> list[list[dict[str, float]]]:
  """`score_generators` for several runs of one structure at once (population members):
  `members` is a sequence of (g_params, g_batch_stats, key); `reference` is one for all,
  or a list with one per member. Returns one list of per-generator scores per member.

  Each member draws exactly the latents of its own `score_generators` call (its key, the
  same batch sizes), so its samples are those of its solo evaluation; the M x k sets of a
  latent batch then share the Inception passes (`quality.evaluator.score_image_batches`).
  """
  members = list(members)
  probe = generate_fn(members[0][0], members[0][1], generate.latents(members[0][2], 1, z_dim))
  k = probe.shape[0]
  per_call = max(1, extractor.batch_size // k)
  chunk = min(batch_size, per_call)
  num_batches = -(-num_samples // chunk)

  def batches():
    for i in range(num_batches):
      n = min(chunk, num_samples - i * chunk)
      images = [
        generate_fn(p, s, generate.latents(jax.random.fold_in(key, i), n, z_dim))
        for p, s, key in members
      ]  # each uint8 [k, n, h, w, 3]
      yield images[0] if len(images) == 1 else jnp.concatenate(images)

  label = None if len(members) == 1 else f"{len(members)} runs x {k} generator(s)"
  if isinstance(reference, list | tuple):
    if len(reference) != len(members):
      raise ValueError(f"{len(reference)} references for {len(members)} runs")
    reference = [r for r in reference for _ in range(k)]
  scores = quality.score_image_batches(
    batches(), num_batches, len(members) * k, extractor, reference, selected, should_stop, label
  )
  return [scores[j * k : (j + 1) * k] for j in range(len(members))]


def reference_statistics(
  images, image_size, extractor, description, cache=None, keep_features=False
):
  """`quality.evaluator.reference_statistics` with the training preprocessing as its resize."""
  return quality.reference_statistics(
    images,
    image_size,
    extractor,
    description,
    cache,
    keep_features,
    resize=functools.partial(real_images_at_resolution, image_size=image_size),
  )


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
    # The metrics of every evaluation (config.eval.metrics), with the selection's metric.
    chosen = registry.parse(
      configlib.eval_metrics(config), "config.eval.metrics", extractor.has_logits
    )
    self.metrics = tuple(dict.fromkeys([*chosen, self.selection[0]]))

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
        images,
        self.config.data.image_size,
        self.extractor,
        description,
        keep_features=registry.REFERENCE_FEATURES in registry.needs(self.metrics),
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
      self.metrics,
    )

  def evaluate_members(
    self, generate_fn, states, keys, num_samples: int, should_stop=None, evaluators=None
  ) -> list[list[dict[str, float]]]:
    """`evaluate` of several states (population members) in shared Inception passes
    (`score_members`): one list of per-generator scores per state. `evaluators` (one per
    state, default this one for all) give each state its reference; their metrics and
    Inception weights must be this one's."""
    evaluators = evaluators or [self] * len(states)
    for e in evaluators:
      if e.metrics != self.metrics or e.extractor.weights.sha256 != self.extractor.weights.sha256:
        raise ValueError("runs scored together need the same metrics and Inception weights")
    return score_members(
      generate_fn,
      [(s.g_params, s.g_batch_stats, key) for s, key in zip(states, keys, strict=True)],
      num_samples,
      self.config.model.z_dim,
      self.extractor,
      [e.reference for e in evaluators],
      self.config.eval.batch_size,
      should_stop,
      self.metrics,
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
  metric = registry.METRICS[chosen[0]]
  if registry.LOGITS in metric.needs and not weights.has_logits:
    raise ConfigError(
      f"config.eval.select={select!r} needs {metric.label}, but the Inception weights "
      f"{weights.name} have no logits; use 'fid:min' or 'auto', or the full weights"
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
