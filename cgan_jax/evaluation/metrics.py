"""Inception Score and Fréchet Inception Distance, in float64 on the host.

IS (Salimans et al., 2016): the samples are cut into `splits` equal consecutive parts;
for each, `exp(mean_x KL(p(y|x) || p(y)))` with `p(y)` the part's mean prediction; the
score is the mean ± std over parts. `p(y|x)` is the softmax over all 1008 logits.

FID (Heusel et al., 2017): `|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))` with
`scipy.linalg.sqrtm`, as pytorch-fid computes it (including its retry with `eps` on the
diagonals when the product is near singular).
"""

import dataclasses

import numpy as np
from scipy import linalg, special


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """logits [n, classes] -> (mean, std) of the Inception Score over `splits` parts."""
  logits = np.asarray(logits, np.float64)
  n = logits.shape[0]
  if n < splits:
    raise ValueError(f"inception_score needs at least splits={splits} samples, got {n}")
  log_p = special.log_softmax(logits, axis=1)
  scores = []
  for part in np.array_split(log_p, splits):
    log_py = special.logsumexp(part, axis=0) - np.log(part.shape[0])
    kl = np.sum(np.exp(part) * (part - log_py), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm has a large imaginary part {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@dataclasses.dataclass
class RunningStats:
  """Mean and covariance of features streamed in batches (float64 sums on the host).

  `sigma` is the unbiased sample covariance, as `np.cov(x, rowvar=False)`.
  """

  dim: int
  count: int = 0
  total: np.ndarray | None = None
  outer: np.ndarray | None = None

  def __post_init__(self):
    self.total = np.zeros(self.dim, np.float64)
    self.outer = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features: np.ndarray) -> None:
    f = np.asarray(features, np.float64)
    self.count += f.shape[0]
    self.total += f.sum(axis=0)
    self.outer += f.T @ f

  @property
  def mu(self) -> np.ndarray:
    return self.total / self.count

  @property
  def sigma(self) -> np.ndarray:
    if self.count < 2:
      raise ValueError("covariance needs at least 2 samples")
    mu = self.mu
    return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """features [n, d] -> (mu [d], sigma [d, d]) in float64, as pytorch-fid."""
  f = np.asarray(features, np.float64)
  return f.mean(axis=0), np.cov(f, rowvar=False)
