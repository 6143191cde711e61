"""Two processes on one machine (`--distributed`, JAX's CPU collectives over Gloo) train
exactly what one process trains on the same global batch.

Each process owns one CPU device and reads its half of every batch; the run writes one
set of checkpoints, which one process reads back (as `cgan_jax.sample` does) and which
holds the same state as a single-process run's.
"""

import socket
import subprocess
import sys

import jax
import numpy as np

from cgan_jax.run import restore

from .conftest import ROOT
from .test_main import TINY

ARGS = ["--config=configs/cifar64.py:smoke", *TINY]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _latest(workdir):
  _, state, step, _ = restore.restore_run(str(workdir), "latest")
  return step, jax.device_get(state)


def test_two_processes_train_like_one(tmp_path):
  multi, single = tmp_path / "multi", tmp_path / "single"
  coordinator = f"localhost:{_free_port()}"
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "cgan_jax.main",
        *ARGS,
        f"--workdir={multi}",
        "--distributed",
        f"--coordinator_address={coordinator}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=400)[0] for p in procs]
  report = "\n".join(
    f"process {i} (exit {p.returncode}):\n{out[-3000:]}"
    for i, (p, out) in enumerate(zip(procs, outs, strict=True))
  )
  assert [p.returncode for p in procs] == [0, 0], report  # both outputs: either may fail first
  assert (multi / "config.json").is_file()
  assert "on 2 device(s)" in outs[0]

  r = subprocess.run(
    [sys.executable, "-m", "cgan_jax.main", *ARGS, f"--workdir={single}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert r.returncode == 0, r.stderr[-3000:]

  (step_a, a), (step_b, b) = _latest(multi), _latest(single)
  assert step_a == step_b == int(b.step) > 0
  paths_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  paths_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
  assert tree_a == tree_b
  for (path, x), (_, y) in zip(paths_a, paths_b, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind == "f":
      # Same function; only the order of the cross-device reductions differs (as in
      # test_parallel.py: Adam turns rounding of near-zero gradients into ~1e-5 moves).
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4, err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
