"""Metric writers and progress reports: clu's where it imports, a logging fallback where not.

clu's `metric_writers` package imports TensorFlow (for its TensorBoard writer), and GPU
images often ship JAX without TensorFlow or clu. Training must still run there, so when
clu cannot be imported the run logs its scalars and progress through absl logging
(`LogWriter`, `ProgressLog`) and says once that TensorBoard files are off; the scores
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
  """clu's `ReportProgress` in the log: steps/s and ETA every `every_steps` steps."""

  def __init__(self, num_train_steps: int, every_steps: int):
    self.total, self.every = num_train_steps, every_steps
    self._last = None

  def __call__(self, step: int) -> None:
    if step % self.every:
      return
    now = time.perf_counter()
    if self._last is not None and step > self._last[0]:
      rate = (step - self._last[0]) / (now - self._last[1])
      eta_min = (self.total - step) / rate / 60 if rate > 0 else float("inf")
      logging.info("Step %d/%d: %.2f steps/s, ETA %.1f min", step, self.total, rate, eta_min)
    self._last = (step, now)


def _clu(module: str):
  """clu.<module>, or None (logged once) where clu or TensorFlow is missing."""
  try:
    if module == "metric_writers":
      from clu import metric_writers as m
    else:
      from clu import periodic_actions as m
    return m
  except ImportError as e:
    if not getattr(_clu, "_warned", False):
      _clu._warned = True
      logging.warning(
        "TensorBoard logging is off (%s); scalars and progress go to the log, scores to "
        "scores.jsonl, sample grids to samples/*.png. `pip install clu tensorflow-cpu` "
        "turns it on.",
        e,
      )
    return None


def make_writer(workdir: str, just_logging: bool):
  """clu's default writer (TensorBoard + log), or `LogWriter` without clu/TensorFlow."""
  m = _clu("metric_writers")
  if m is None:
    return LogWriter()
  return m.create_default_writer(workdir, just_logging=just_logging)


def make_progress(num_train_steps: int, writer, every_steps: int):
  """clu's `ReportProgress` (steps/s, ETA), or `ProgressLog` without clu/TensorFlow."""
  m = _clu("periodic_actions")
  if m is None or isinstance(writer, LogWriter):
    return ProgressLog(num_train_steps, every_steps)
  return m.ReportProgress(num_train_steps=num_train_steps, writer=writer, every_steps=every_steps)
