"""The metric registry: every sample-quality metric, in one place.

A metric is one `Metric` entry: its name, its direction ('max': higher is better, 'min':
lower is better), its display label, what it needs, and one function from the generated
set's Inception outputs and the reference to a mapping of values (the metric's own name,
plus `<name>_std` where it has a spread, e.g. {"kid": ..., "kid_std": ...}). Logging,
`scores.jsonl`, the best checkpoint (`config.eval.select`), the search objective and its
direction, `analyze` and the CLIs (`fid --metrics`, `evaluate --metrics`) read it.

Adding a metric is one function and one `register(Metric(...))` call, e.g.

    def mean_norm(generated, reference):
      return {"mean_norm": float(np.linalg.norm(generated.features, axis=1).mean())}

    register(Metric("mean_norm", "min", "mean |f|", frozenset({FEATURES}), mean_norm))

What a metric can need (`Metric.needs`):
  STATISTICS           the generated set's mean and covariance (always kept)
  FEATURES             the generated set's pool3 features, [n, 2048]
  LOGITS               the generated set's classifier logits (the full Inception weights)
  REFERENCE_FEATURES   the reference's pool3 features, not only its mean and covariance
                       (kept in the reference cache when asked for)

Entries that share one function (precision and recall; density and coverage) are
computed once when both are asked for.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from cgan_jax.errors import ConfigError
from cgan_jax.quality import metrics

STATISTICS = "statistics"
FEATURES = "features"
LOGITS = "logits"
REFERENCE_FEATURES = "reference_features"
DIRECTIONS = ("max", "min")
IS_SPLITS = 10


@dataclasses.dataclass
class Generated:
  """One generator's (or image set's) Inception outputs."""

  stats: metrics.RunningStats
  features: np.ndarray | None = None  # [n, d], when a metric needs FEATURES
  logits: np.ndarray | None = None  # [n, classes], when the weights have them


@dataclasses.dataclass(frozen=True)
class Metric:
  name: str
  direction: str  # 'max' or 'min'
  label: str  # for tables and figures
  needs: frozenset
  compute: Callable[[Generated, object], Mapping[str, float]]  # (generated, reference)
  description: str = ""

  @property
  def optuna_direction(self) -> str:
    return "maximize" if self.direction == "max" else "minimize"

  def better(self, a: float, b: float) -> bool:
    """Whether value `a` is better than `b`."""
    return a > b if self.direction == "max" else a < b

  def best(self, values: Iterable[float]) -> float:
    values = list(values)
    return max(values) if self.direction == "max" else min(values)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
  """Adds `metric` (a name may be registered once; tests unregister theirs)."""
  if metric.direction not in DIRECTIONS:
    raise ValueError(f"metric {metric.name!r}: direction must be one of {DIRECTIONS}")
  if metric.name in METRICS and METRICS[metric.name] is not metric:
    raise ValueError(f"metric {metric.name!r} is already registered")
  METRICS[metric.name] = metric
  return metric


def unregister(name: str) -> None:
  METRICS.pop(name, None)


def names() -> tuple[str, ...]:
  return tuple(METRICS)


def get(name: str, field: str = "metric") -> Metric:
  """The entry for `name`; an unknown name is one ConfigError naming `field`."""
  if name not in METRICS:
    raise ConfigError(f"{field}={name!r} is not a metric; use one of: {', '.join(METRICS)}")
  return METRICS[name]


def parse(text, field: str = "--metrics", has_logits: bool = True) -> tuple[str, ...]:
  """'fid,kid' (or a sequence) -> the metric names, checked; 'auto' (alone or in the list)
  -> FID, and IS when the weights have logits. A metric that needs logits the weights lack
  is an error."""
  items = text if isinstance(text, list | tuple) else str(text).split(",")
  items = [str(n).strip() for n in items if str(n).strip()] or ["auto"]
  auto = ["fid", "is"] if has_logits else ["fid"]
  items = [m for n in items for m in (auto if n == "auto" else [n])]
  out = []
  for n in items:
    metric = get(n, field)
    if LOGITS in metric.needs and not has_logits:
      raise ConfigError(
        f"{field}: {n!r} needs the classifier logits, which these Inception weights lack "
        "(the full weights have them; see README, Evaluation)"
      )
    if n not in out:
      out.append(n)
  return tuple(out)


def needs(selected: Iterable[str]) -> frozenset:
  """What the selected metrics need, together."""
  out = set()
  for n in selected:
    out |= METRICS[n].needs
  return frozenset(out)


def compute(selected: Iterable[str], generated: Generated, reference) -> dict[str, float]:
  """The selected metrics' values (each entry's own keys), each shared function once."""
  done: dict[Callable, Mapping[str, float]] = {}
  out: dict[str, float] = {}
  for n in selected:
    metric = METRICS[n]
    if metric.compute not in done:
      done[metric.compute] = metric.compute(generated, reference)
    values = done[metric.compute]
    for key in (n, f"{n}_std"):
      if key in values:
        out[key] = float(values[key])
  return out


def format_value(values: Mapping[str, float], name: str, digits: int = 3) -> str:
  """'12.345' or '12.345 ± 0.100' (a metric with a spread), 'unavailable' when absent."""
  if name not in values:
    return "unavailable"
  text = f"{values[name]:.{digits}f}"
  if f"{name}_std" in values:
    text += f" ± {values[f'{name}_std']:.{digits}f}"
  return text


# ---- the built-in metrics ---------------------------------------------------------------


def _fid(generated: Generated, reference) -> dict[str, float]:
  stats = generated.stats
  factor = stats.factor()  # fewer samples than features: no root of the reference needed
  root = None if factor is not None else reference.sigma_root
  fid = metrics.frechet_distance(
    stats.mu, stats.sigma, reference.mu, reference.sigma, sigma2_root=root, factor1=factor
  )
  return {"fid": fid}


def _is(generated: Generated, reference) -> dict[str, float]:
  mean, std = metrics.inception_score(generated.logits, IS_SPLITS)
  return {"is": mean, "is_std": std}


def _kid(generated: Generated, reference) -> dict[str, float]:
  mean, std = metrics.kernel_inception_distance(generated.features, reference.features)
  return {"kid": mean, "kid_std": std}


def _precision_recall(generated: Generated, reference) -> dict[str, float]:
  return metrics.precision_recall(reference.features, generated.features)


def _density_coverage(generated: Generated, reference) -> dict[str, float]:
  return metrics.density_coverage(reference.features, generated.features)


_NN = frozenset({FEATURES, REFERENCE_FEATURES})
for _m in (
  Metric("fid", "min", "FID", frozenset({STATISTICS}), _fid, "Fréchet Inception Distance"),
  Metric("is", "max", "IS", frozenset({LOGITS}), _is, f"Inception Score, {IS_SPLITS} splits"),
  Metric(
    "kid",
    "min",
    "KID",
    _NN,
    _kid,
    f"Kernel Inception Distance, unbiased MMD², cubic kernel, {metrics.KID_SUBSETS} subsets "
    f"of {metrics.KID_SUBSET_SIZE}",
  ),
  Metric(
    "precision",
    "max",
    "precision",
    _NN,
    _precision_recall,
    f"improved precision, k = {metrics.PR_NEAREST_K}",
  ),
  Metric(
    "recall",
    "max",
    "recall",
    _NN,
    _precision_recall,
    f"improved recall, k = {metrics.PR_NEAREST_K}",
  ),
  Metric("density", "max", "density", _NN, _density_coverage, f"k = {metrics.DC_NEAREST_K}"),
  Metric("coverage", "max", "coverage", _NN, _density_coverage, f"k = {metrics.DC_NEAREST_K}"),
):
  register(_m)
