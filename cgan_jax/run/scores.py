"""`workdir/scores.jsonl`: one JSON line per evaluation of a run.

Each line:
  step, epoch         when it was taken (after `step` generator updates, `epoch` epochs)
  final               whether it is the run's last evaluation
  generators          one plain mapping per generator: {"fid": ..., "is": ..., "is_std": ...}
                      ("is"/"is_std" only where the weights have logits)
  num_samples         samples per generator
  weights, weights_sha256   the Inception weights
  reference           the real images the FID statistics come from
  eval_s              seconds the evaluation took
  process_s           seconds since this process started the run (resets on resume)
  time                wall-clock time (UTC, ISO 8601)

A resumed run repeats the steps after its checkpoint, deterministically, so `append`
drops any line at or after the new line's step before adding it: the file never holds two
lines for one step, and a line from before a crash that the resumed run redoes is replaced.
"""

import json
import os

from absl import logging

FILENAME = "scores.jsonl"


def path(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def read(workdir: str) -> list[dict]:
  """The run's evaluation records, oldest first ([] when there are none)."""
  p = path(workdir)
  if not os.path.isfile(p):
    return []
  with open(p) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except ValueError:
      if i < len(lines) - 1:
        raise ValueError(f"{p}: line {i + 1} is not JSON; fix or remove it") from None
      # A process killed while appending leaves a torn last line: that evaluation is redone.
      logging.warning(
        "%s: its last line is incomplete (a run stopped while writing it); it is ignored.", p
      )
  return records


def append(workdir: str, record: dict) -> None:
  """Adds `record`, dropping earlier lines at or after its step (see the module doc)."""
  kept = [r for r in read(workdir) if r["step"] < record["step"]]
  tmp = path(workdir) + ".tmp"
  with open(tmp, "w") as f:
    for r in [*kept, record]:
      f.write(json.dumps(r, sort_keys=True) + "\n")
  os.replace(tmp, path(workdir))
