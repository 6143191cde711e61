"""Reading runs for the paper's tables and figures: what each run is (from `config.json`),
its scores (from `scores.jsonl`) and, where `reproduce` wrote them, its wall time
(`reproduce_time.json`) and its best checkpoint scored again (`selected.json`). The table
itself is `analysis.table`.

`mean_std` is the one convention for "mean ± std over seeds" (the sample std, ddof = 1),
which `analysis.table` describes.
"""

import dataclasses
import json
import os

import numpy as np

from cgan_jax import configlib
from cgan_jax.errors import ConfigError
from cgan_jax.run import restore
from cgan_jax.run import scores as scores_lib

TIMING = "reproduce_time.json"  # {"wall_s": ...}: the run's wall time, written by reproduce
SELECTED = "selected.json"  # the best checkpoint scored again (reproduce's Table 1 rule)


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: str
  name: str
  method: str
  sn: bool
  transfer: str
  k: int
  gates_d: str
  gates_transfer: str
  seed: int
  epochs: int
  records: tuple
  finished: bool = False  # its last evaluation is the final one
  wall_s: float | None = None  # from reproduce_time.json
  eval_s: float = 0.0  # the seconds of its evaluations (scores.jsonl)
  selected: dict | None = None  # selected.json


def load_run(workdir: str) -> Run:
  """A run's description and scores; one-line ConfigError when either is missing."""
  workdir = workdir.rstrip("/")
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise ConfigError(f"{workdir!r} holds no training run (no config.json)")
  if not os.path.isfile(scores_lib.path(workdir)):
    raise ConfigError(
      f"{workdir!r} has no {scores_lib.FILENAME}: the run has not been evaluated (train it "
      f"with config.eval.enabled and Inception weights)"
    )
  records = scores_lib.read(workdir)
  if not records:
    raise ConfigError(f"{scores_lib.path(workdir)!r} is empty: the run has no evaluation yet")
  c = restore.load_run_config(workdir)
  transfer = c.graph.transfer if c.model.k > 1 else "none"
  return Run(
    workdir=workdir,
    name=os.path.basename(workdir),
    method=c.method,
    sn=configlib.d_norm(c) == "spectral",
    transfer=transfer,
    k=int(c.model.k),
    gates_d=c.graph.get("gates_d", "") or "through",
    gates_transfer=(c.graph.get("gates_transfer", "") or "through") if transfer != "none" else "",
    seed=int(c.seed),
    epochs=int(c.num_epochs),
    records=tuple(records),
    finished=bool(records[-1].get("final")),
    wall_s=_read_json(os.path.join(workdir, TIMING), {}).get("wall_s"),
    eval_s=float(sum(r.get("eval_s", 0.0) for r in records)),
    selected=_read_json(os.path.join(workdir, SELECTED), None),
  )


def _read_json(path: str, default):
  if not os.path.isfile(path):
    return default
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path!r} is unreadable ({e})") from None


def mean_std(values: list[float]) -> tuple[float, float | None]:
  """Mean and std over seeds: the sample std (ddof = 1; for two seeds, the range / sqrt 2),
  the one convention of `analyze table` and `reproduce`; None for a single value."""
  a = np.asarray(values, np.float64)
  return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)
