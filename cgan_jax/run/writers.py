"""Metric writers and progress reports: TensorBoard event files plus the log.

The progress line (steps/s, ETA) is `ProgressLog`'s.

TensorBoard files are written with the `tensorboard` package's own event-file writer and
summary protos (what `torch.utils.tensorboard` builds on), not through clu's
`SummaryWriter`: that one imports TensorFlow, which took 10-18 s and about 700 MB in every
training process (the CLI, each search trial, each test subprocess) only to write a few
scalars and images. `tensorboard` is pure Python; GPU images often ship JAX without it,
and then the run logs its scalars through absl logging (`LogWriter`) and says once that
TensorBoard files are off; the scores still go to `scores.jsonl` and the sample grids to
PNG files. The writers follow clu's `MetricWriter` method names (`write_scalars`,
`write_images`, `write_hparams`, `flush`, `close`), so a clu writer can stand in.
"""

import io
import itertools
import os
import socket
import time

import numpy as np
from absl import logging


class LogWriter:
  """Scalars to the absl log (clu's `LoggingWriter` format); images and hparams are not
  logged (they are PNG files and workdir/config.json)."""

  # Scalars the log already shows in another line (the progress line's steps/s).
  SHOWN_ELSEWHERE = frozenset({"steps_per_sec"})

  def write_scalars(self, step: int, scalars: dict) -> None:
    shown = sorted((n, v) for n, v in scalars.items() if n not in self.SHOWN_ELSEWHERE)
    if shown:
      logging.info("[%d] %s", step, ", ".join(f"{n}={float(v):.4g}" for n, v in shown))

  def write_images(self, step: int, images: dict) -> None:
    del step, images  # the grids are also written as PNG files

  def write_hparams(self, hparams: dict) -> None:
    del hparams  # the config is written to workdir/config.json

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class ProgressLog:
  """Steps/s and ETA in the log, one line every `every_steps` steps.

  The clock starts at the first step the run takes (`__call__`'s first call), after the
  step was compiled, so the first rate is a real one. The rate is of training alone: the
  evaluations' seconds (told with `evaluated`) are taken out of it, and the ETA adds the
  evaluations still to come (`plan`: (step, samples) of each, timed by the seconds per
  sample measured so far), so that a line right after an evaluation does not extrapolate
  that evaluation's time over every remaining step.
  """

  def __init__(self, num_train_steps: int, every_steps: int, plan=()):
    self.total, self.every = num_train_steps, every_steps
    self.plan = list(plan)  # (step, samples) of the evaluations, in steps of this clock
    self._start = None
    self._last = None
    self._eval_window = 0.0  # evaluation seconds since the last line
    self._eval_s = 0.0
    self._eval_samples = 0

  def evaluated(self, seconds: float, samples: int) -> None:
    """An evaluation of `samples` samples (all generators, all members) took `seconds`."""
    self._eval_window += seconds
    self._eval_s += seconds
    self._eval_samples += samples

  def __call__(self, step: int) -> float | None:
    """Reports at multiples of `every_steps`; returns the training steps/s it reported (or
    None)."""
    now = time.perf_counter()
    if self._start is None:
      self._start = self._last = (step, now)
      self._eval_window = 0.0
      return None
    if step % self.every or step <= self._last[0]:
      return None
    train_s = max(now - self._last[1] - self._eval_window, 1e-9)
    rate = (step - self._last[0]) / train_s
    train_min = (self.total - step) / rate / 60 if rate > 0 else float("inf")
    due = [samples for at, samples in self.plan if at >= step]
    eta = f"ETA {train_min:.1f} min"
    if due and self._eval_samples:
      eval_min = sum(due) * self._eval_s / self._eval_samples / 60
      eta = (
        f"ETA {train_min + eval_min:.1f} min ({train_min:.1f} training + {len(due)} "
        f"evaluation(s) {eval_min:.1f})"
      )
    elif due:
      eta = f"ETA {train_min:.1f} min of training + {len(due)} evaluation(s)"
    logging.info(
      "Step %d/%d (%.1f%%): %.2f steps/s, %s",
      step,
      self.total,
      100.0 * step / self.total,
      rate,
      eta,
    )
    self._last = (step, now)
    self._eval_window = 0.0
    return rate


def _tensorboard():
  """(RecordWriter, summary_pb2, event_pb2, hparams summary_v2), or None (logged once)
  where `tensorboard` is not installed."""
  try:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.summary.writer.record_writer import RecordWriter

    return RecordWriter, summary_pb2, event_pb2, summary_v2
  except ImportError as e:
    if not getattr(_tensorboard, "_warned", False):
      _tensorboard._warned = True
      logging.warning(
        "TensorBoard logging is off (%s); scalars and progress go to the log, scores to "
        "scores.jsonl, sample grids to samples/*.png. `pip install tensorboard` turns it on.",
        e,
      )
    return None


_files_opened = itertools.count()


class TensorBoardWriter:
  """Scalars, images and hparams as a TensorBoard event file in `logdir`, without TensorFlow.

  Scalars are `simple_value`s and images PNG-encoded `Summary.Image`s, the forms
  TensorBoard reads as its scalar and image plugins' data; hparams go to the hparams
  plugin (`summary_v2.hparams_pb`). The file is named and framed as tensorboard's own
  `EventFileWriter` does it (its `RecordWriter`), but opened with plain `open`: that
  writer opens files through `tensorboard.compat.tf`, which imports TensorFlow wherever
  it is installed. So `logdir` is a local (or mounted) folder, like the rest of the
  workdir's PNG grids and scores. Each write is flushed: a run writes a few events per
  log interval, and a killed process loses none of them.
  """

  def __init__(self, logdir: str):
    tb = _tensorboard()
    if tb is None:
      raise ImportError("tensorboard is not installed")
    record_writer, self._summary_pb2, self._event_pb2, self._hparams = tb
    os.makedirs(logdir, exist_ok=True)
    stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    name = f"events.out.tfevents.{stamp}.{next(_files_opened)}"
    self.path = os.path.join(logdir, name)
    self._records = record_writer(open(self.path, "wb"))  # noqa: SIM115 (closed in close())
    self._add(self._event_pb2.Event(file_version="brain.Event:2"))

  def _add(self, event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())
    self._records.flush()

  def _summary(self, step: int | None, summary) -> None:
    event = self._event_pb2.Event(summary=summary)
    if step is not None:
      event.step = int(step)
    self._add(event)

  def write_scalars(self, step: int, scalars: dict) -> None:
    value = self._summary_pb2.Summary.Value
    values = [value(tag=name, simple_value=float(v)) for name, v in scalars.items()]
    self._summary(step, self._summary_pb2.Summary(value=values))

  def write_images(self, step: int, images: dict) -> None:
    """`images`: name -> uint8 [h, w, c] or [n, h, w, c]; the first of a batch is written."""
    from PIL import Image

    summary_pb2 = self._summary_pb2
    values = []
    for name, image in images.items():
      image = np.asarray(image)
      image = image[0] if image.ndim == 4 else image
      buf = io.BytesIO()
      Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, "PNG")
      encoded = summary_pb2.Summary.Image(
        height=image.shape[0],
        width=image.shape[1],
        colorspace=image.shape[2],
        encoded_image_string=buf.getvalue(),
      )
      values.append(summary_pb2.Summary.Value(tag=name, image=encoded))
    self._summary(step, summary_pb2.Summary(value=values))

  def write_hparams(self, hparams: dict) -> None:
    self._summary(None, self._hparams.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()


class MultiWriter:
  """Writes to each of `writers` in turn (clu's `MultiWriter`, for these methods)."""

  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: dict) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_images(self, step: int, images: dict) -> None:
    for w in self.writers:
      w.write_images(step, images)

  def write_hparams(self, hparams: dict) -> None:
    for w in self.writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


def make_writer(workdir: str, just_logging: bool):
  """The log plus TensorBoard files in `workdir` (the log only when `just_logging`, e.g. on
  non-lead processes, or when `tensorboard` is not installed)."""
  if just_logging or _tensorboard() is None:
    return LogWriter()
  return MultiWriter([LogWriter(), TensorBoardWriter(workdir)])


def make_progress(num_train_steps: int, every_steps: int, plan=()) -> ProgressLog:
  """The progress line (steps/s, ETA). Not clu's `ReportProgress`, which printed it twice
  (its work-unit notes and the writer's scalars)."""
  return ProgressLog(num_train_steps, every_steps, plan)
