"""Ctrl-C and SIGTERM at every moment of a training program (standard library only).

A Python signal handler runs only when the main thread executes Python bytecode. While it
sits in a long C call (importing JAX, XLA compiling the step for a minute on a CPU,
restoring a checkpoint) a Ctrl-C waits, and a library that catches broad exceptions on the
way can swallow the `KeyboardInterrupt`: the program then trained to the end (issue 29).

`install()` (the training CLI calls it first thing, before JAX is imported) blocks SIGINT
and SIGTERM in the main thread, so in every thread started later, and receives them in
one watcher thread with `signal.sigwait`, which answers at once whatever the main thread
is doing:

  before the first training step has finished: one line, exit at once (130 for SIGINT,
      143 for SIGTERM). Nothing needs saving, and nothing of an existing run was changed;
  after it: the training loop's handler (`deliver_to`) records the signal, and the loop
      finishes its step, saves a checkpoint and exits 0. A second signal while it does so
      exits at once.

Without `install()` (a notebook, tests) the loop installs ordinary `signal.signal`
handlers. The search's workers call `record_signals()` instead: a signal at any moment
(setting a trial up, between trials) is recorded in `pending`, the training loop starts
from it (and trains nothing if it is already set), and the worker checkpoints its trial,
queues it again and exits 0.
"""

import os
import signal
import sys
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_lock = threading.Lock()
_handler: Callable[[str], None] | None = None
_watcher: threading.Thread | None = None


pending: str | None = None  # a signal recorded by `record_signals`' handlers
recording = False  # whether `record_signals` was called: only then does `pending` persist


def record_signals() -> None:
  """Python handlers that record SIGINT/SIGTERM in `pending` (main thread only)."""
  global recording
  recording = True

  def handler(signum, frame):
    del frame
    global pending
    pending = signal.Signals(signum).name

  for sig in SIGNALS:
    signal.signal(sig, handler)


def installed() -> bool:
  """Whether `install` runs a watcher thread in this process."""
  return _watcher is not None


def install() -> None:
  """Blocks SIGINT/SIGTERM in this (the main) thread and starts the watcher thread.

  Call it from the main thread before any other thread starts (threads inherit the
  signal mask at creation; one started earlier could still receive the signals).
  """
  global _watcher
  if _watcher is not None or not hasattr(signal, "pthread_sigmask"):
    return
  signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
  _watcher = threading.Thread(target=_watch, name="signal-watcher", daemon=True)
  _watcher.start()


def _watch() -> None:
  while True:
    signum = signal.sigwait(SIGNALS)
    name = signal.Signals(signum).name
    with _lock:
      handler = _handler
    if handler is not None:
      handler(name)
      continue
    print(
      f"{name} received before training started: exiting now (nothing was saved, and "
      "nothing of an existing run was changed).",
      file=sys.stderr,
      flush=True,
    )
    os._exit(128 + signum)


class deliver_to:  # noqa: N801 - used as a context manager, like a function
  """Within the block, a signal calls `handler(name)` instead of ending the process; a
  second signal while the first is being handled ends it at once."""

  def __init__(self, handler: Callable[[str], None]):
    self._user = handler
    self._count = 0

  def _handle(self, name: str) -> None:
    self._count += 1
    if self._count > 1:
      print(f"second {name}: exiting now, without a checkpoint.", file=sys.stderr, flush=True)
      os._exit(128 + signal.Signals[name])
    self._user(name)

  def __enter__(self):
    global _handler
    with _lock:
      self._previous, _handler = _handler, self._handle
    return self

  def __exit__(self, *exc):
    global _handler
    with _lock:
      _handler = self._previous
