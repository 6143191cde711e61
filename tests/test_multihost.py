"""Two processes on one machine (`--distributed`, JAX's CPU collectives over Gloo) train
exactly what one process trains on the same global batch.

Each process owns one CPU device and reads its half of every batch; the run writes one
set of checkpoints, and `cgan_jax.sample` from it matches a single-process run.
"""

import socket
import subprocess
import sys

import numpy as np

from .conftest import ROOT
from .test_main import TINY

ARGS = ["--config=configs/cifar64.py:smoke", *TINY]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _sample(workdir, out):
  r = subprocess.run(
    [sys.executable, "-m", "cgan_jax.sample", f"--workdir={workdir}", "--num=8", f"--out={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return np.load(out)


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
  for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
    assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
  assert "on 2 device(s)" in outs[0]

  r = subprocess.run(
    [sys.executable, "-m", "cgan_jax.main", *ARGS, f"--workdir={single}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert r.returncode == 0, r.stderr[-3000:]

  a, b = _sample(multi, tmp_path / "multi.npz"), _sample(single, tmp_path / "single.npz")
  assert sorted(a.files) == sorted(b.files)
  for name in a.files:
    # Same function; only the order of the cross-device reductions differs.
    np.testing.assert_allclose(a[name], b[name], atol=1e-4)
