"""Metric writers and progress reports: clu's where it imports, a logging fallback where not.

The progress line (steps/s, ETA) is `ProgressLog`'s, with or without clu.

clu's `metric_writers` package imports TensorFlow (for its TensorBoard writer), and GPU
images often ship JAX without TensorFlow or clu. Training must still run there, so when
clu cannot be imported the run logs its scalars and progress through absl logging
(`LogWriter`) and says once that TensorBoard files are off; the scores
still go to `scores.jsonl` and the sample grids to PNG files.
"""

import time

from absl import logging


class LogWriter:
  """The subset of clu's `MetricWriter` that training uses, writing to the log only."""

  def write_scalars(self, step: int, scalars: dict) -> None:
    text = ", ".join(f"{name}={float(value):.4g}" for name, value in sorted(scalars.items()))
    logging.info("[%d] %s", step, text)

  def write_images(self, step: int, images: dict) -> None:
    del step, images  # the grids are also written as PNG files

  def write_hparams(self, hparams: dict) -> None:
    del hparams  # the config is written to workdir/config.json

  def flush(self) -> None:
    pass


class ProgressLog:
  """Steps/s and ETA in the log, one line every `every_steps` steps.

  The clock starts at the first step the run takes (`__call__`'s first call), after the
  step was compiled, so the first rate is a real one; evaluation and checkpoint time
  between two lines count (the ETA is for the whole run).
  """

  def __init__(self, num_train_steps: int, every_steps: int):
    self.total, self.every = num_train_steps, every_steps
    self._start = None
    self._last = None

  def __call__(self, step: int) -> float | None:
    """Reports at multiples of `every_steps`; returns the steps/s it reported (or None)."""
    now = time.perf_counter()
    if self._start is None:
      self._start = self._last = (step, now)
      return None
    if step % self.every or step <= self._last[0]:
      return None
    rate = (step - self._last[0]) / (now - self._last[1])
    eta_min = (self.total - step) / rate / 60 if rate > 0 else float("inf")
    logging.info(
      "Step %d/%d (%.1f%%): %.2f steps/s, ETA %.1f min",
      step,
      self.total,
      100.0 * step / self.total,
      rate,
      eta_min,
    )
    self._last = (step, now)
    return rate


def _clu_metric_writers():
  """clu.metric_writers, or None (logged once) where clu or TensorFlow is missing."""
  try:
    from clu import metric_writers

    return metric_writers
  except ImportError as e:
    if not getattr(_clu_metric_writers, "_warned", False):
      _clu_metric_writers._warned = True
      logging.warning(
        "TensorBoard logging is off (%s); scalars and progress go to the log, scores to "
        "scores.jsonl, sample grids to samples/*.png. `pip install clu tensorflow-cpu` "
        "turns it on.",
        e,
      )
    return None


def make_writer(workdir: str, just_logging: bool):
  """clu's default writer (TensorBoard + log), or `LogWriter` without clu/TensorFlow."""
  m = _clu_metric_writers()
  if m is None:
    return LogWriter()
  return m.create_default_writer(workdir, just_logging=just_logging)


def make_progress(num_train_steps: int, every_steps: int) -> ProgressLog:
  """The progress line (steps/s, ETA). One format, with or without clu: clu's
  `ReportProgress` printed it twice (its work-unit notes and the writer's scalars)."""
  return ProgressLog(num_train_steps, every_steps)
