"""The CLIs as a user runs them: bad input, SIGTERM, and the README's smoke run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from .conftest import ROOT, tiny_config

TINY = [
  "--config.data.source=synthetic",
  "--config.data.num_train=32",
  "--config.data.image_size=16",
  "--config.model.g_width=4",
  "--config.model.d_width=4",
  "--config.model.z_dim=8",
  "--config.train.batch_size=8",
  "--config.eval.num_grid=4",
  "--config.eval.enabled=False",  # IS/FID in training: tests/test_evaluation.py
]


def run_cli(module, *args, env=None, timeout=300):
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def snapshot(path):
  return {
    os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
    for r, _, fs in os.walk(path)
    for f in fs
  }


@pytest.fixture
def existing_workdir(tmp_path):
  wd = tmp_path / "existing"
  wd.mkdir()
  c = tiny_config("proposed")
  (wd / "config.json").write_text(c.to_json_best_effort(indent=2, sort_keys=True))
  (wd / "notes.txt").write_text("earlier work")
  return wd


def _corrupt_archive(tmp_path):
  p = tmp_path / "cifar-10-python.tar.gz"
  p.write_bytes(b"\x1f\x8b\x08\x00 definitely not a tarball")
  return str(p)


@pytest.mark.parametrize(
  "case,extra,env,match",
  [
    (
      "missing archive",
      [
        "--config.data.source=cifar_archive",
        "--config.data.path=/nonexistent/cifar-10-python.tar.gz",
      ],
      {},
      "config.data.path='/nonexistent/cifar-10-python.tar.gz': no CIFAR-10 archive",
    ),
    (
      "corrupt archive",
      ["--config.data.source=cifar_archive", "CORRUPT"],
      {},
      "is not a readable cifar-10-python.tar.gz",
    ),
    (
      "batch vs devices",
      ["--config.train.batch_size=6"],
      {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
      "config.train.batch_size=6 is not divisible by the 4 data-parallel devices",
    ),
    (
      "unknown source",
      ["--config.data.source=imagenet"],
      {},
      "config.data.source='imagenet' is not allowed; choose one of",
    ),
    ("zero epochs", ["--config.num_epochs=0"], {}, "config.num_epochs=0 must be an integer"),
    (
      "incompatible",
      ["--config.model.k=3"],
      {},
      "holds a run with config.model.k=2, but this config has config.model.k=3",
    ),
    ("mistyped field", ["--config.modle.k=3"], {}, "--config.modle.k: no config field 'modle'"),
    (
      "misspelled field",
      ["--config.data.sorce=x"],
      {},
      "--config.data.sorce: no config field 'sorce'; did you mean 'source'?",
    ),
    (
      "relative archive path",
      ["--config.data.source=cifar_archive", "--config.data.path=nowhere/cifar.tar.gz"],
      {},
      f"config.data.path='nowhere/cifar.tar.gz' (resolved: {ROOT / 'nowhere/cifar.tar.gz'})",
    ),
    (
      "unknown gate",
      ["--config.graph.gates_d=through,sometimes"],
      {},
      "config.graph.gates_d: unknown gate 'sometimes'",
    ),
    (
      "gen axis over more devices than exist",
      ["--config.train.gen_devices=2"],
      {},
      "config.train.gen_devices=2 must be a positive divisor of the 1 devices",
    ),
    ("process id alone", ["--process_id=1"], {}, "--process_id needs --distributed"),
    (
      "partial multi-host",
      ["--distributed", "--coordinator_address=10.0.0.1:1234"],
      {},
      "also needs --num_processes --process_id",
    ),
    (
      "process id range",
      ["--distributed", "--coordinator_address=h:1", "--num_processes=2", "--process_id=2"],
      {},
      "--process_id=2 must be in [0, --num_processes=2)",
    ),
  ],
)
def test_bad_input_exits_2_with_one_line_and_leaves_workdir(
  existing_workdir, tmp_path, case, extra, env, match
):
  extra = [
    f"--config.data.path={_corrupt_archive(tmp_path)}" if a == "CORRUPT" else a for a in extra
  ]
  before = snapshot(existing_workdir)
  r = run_cli(
    "cgan_jax.main",
    "--config=configs/cifar64.py:smoke",
    *TINY,
    *extra,
    f"--workdir={existing_workdir}",
    env=env,
  )
  assert r.returncode == 2, (case, r.stderr[-2000:])
  errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and match in errors[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert snapshot(existing_workdir) == before


def test_a_corrupt_latest_checkpoint_is_one_warning(tmp_path):
  """The CLI falls back to the previous checkpoint with one warning line, and nothing
  else on stderr that a user would read as a failure (no orbax tracebacks)."""
  wd = str(tmp_path / "run")
  args = ("--config=configs/cifar64.py", *TINY, "--config.num_epochs=2", f"--workdir={wd}")
  r = run_cli("cgan_jax.main", *args)
  assert r.returncode == 0, r.stderr[-2000:]
  data = os.path.join(wd, "checkpoints", "8", "default", "ocdbt.process_0", "d")
  for name in os.listdir(data):  # the arrays' bytes, as a torn copy would leave them
    path = os.path.join(data, name)
    os.truncate(path, max(os.path.getsize(path) // 3, 1))
  r = run_cli("cgan_jax.main", *args)
  assert r.returncode == 0, r.stderr[-2000:]
  warnings = [line for line in r.stderr.splitlines() if line.startswith("W")]
  assert len(warnings) == 1, warnings
  assert "Checkpoint at step 8 could not be restored" in warnings[0]
  assert warnings[0].endswith("; trying step 4.") and "TensorStore details" not in warnings[0]
  assert "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr
  assert "Resumed from step 4" in r.stderr
  assert os.path.isdir(os.path.join(wd, "corrupt", "8"))


def test_unwritable_workdir_and_unknown_variant(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  r = run_cli(
    "cgan_jax.main", "--config=configs/cifar64.py:smoke", *TINY, f"--workdir={blocker}/run"
  )
  assert r.returncode == 2 and "is not a writable directory" in r.stderr
  r = run_cli("cgan_jax.main", "--config=configs/cifar64.py:smoke,wgan", f"--workdir={tmp_path}/w")
  assert r.returncode == 2 and "config variant='wgan' is not allowed" in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  wd = tmp_path / "run"
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "cgan_jax.main",
      "--config=configs/cifar64.py",
      *TINY,
      "--config.num_epochs=1000",
      "--config.train.log_every_steps=1",
      f"--workdir={wd}",
    ],
    cwd=ROOT,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 240
  for line in proc.stderr:
    if "steps/s" in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  rest = proc.stderr.read()
  assert proc.wait(timeout=120) == 0, rest[-2000:]
  assert "Received SIGTERM" in rest
  steps = os.listdir(wd / "checkpoints")
  assert len(steps) == 1 and int(steps[0]) > 0


def _start_main(wd, *extra):
  """The training CLI on a tiny config, its compile cache off (so compiling takes seconds)."""
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "cgan_jax.main",
      "--config=configs/cifar64.py",
      *TINY,
      "--config.model.k=3",
      "--config.graph.gates_d=through,through,through",
      "--config.graph.gates_transfer=-,through,through;through,-,through;through,through,-",
      *extra,
      f"--workdir={wd}",
    ],
    cwd=ROOT,
    env={**os.environ, "CGAN_JAX_COMPILE_CACHE": "off"},
    stderr=subprocess.PIPE,
    text=True,
  )


def _interrupt_when(proc, marker, timeout=240):
  """Sends SIGINT once stderr shows `marker` (None: at once); returns (code, seconds from
  the signal to the exit, the rest of stderr)."""
  seen = []
  if marker is not None:
    deadline = time.time() + timeout
    for line in proc.stderr:
      seen.append(line)
      if marker in line or time.time() > deadline:
        break
    assert marker in "".join(seen), "".join(seen)[-3000:]
  t0 = time.time()
  proc.send_signal(signal.SIGINT)
  rest = proc.stderr.read()
  code = proc.wait(timeout=120)
  return code, time.time() - t0, rest


def _assert_one_line_exit(code, seconds, rest):
  assert code == 130, rest[-3000:]
  assert seconds < 10, seconds
  assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest[-3000:]
  lines = [ln for ln in rest.splitlines() if "SIGINT" in ln]
  assert lines == [
    "SIGINT received before training started: exiting now (nothing was saved, and nothing "
    "of an existing run was changed)."
  ], rest[-3000:]


def test_ctrl_c_before_the_config_is_parsed_exits_at_once(tmp_path):
  """Issue 29: SIGINT while Python imports JAX, before the flags are parsed."""
  wd = tmp_path / "run"
  proc = _start_main(wd)
  time.sleep(1.0)  # the guard is in place within ~0.1 s; JAX's import takes longer
  _assert_one_line_exit(*_interrupt_when(proc, None))
  assert not wd.exists()


def test_ctrl_c_while_compiling_exits_at_once_and_writes_no_checkpoint(tmp_path):
  """Issue 29: SIGINT while the step compiles (the run used to compile, train to the end
  and exit 0). No checkpoint is written: nothing was trained."""
  wd = tmp_path / "run"
  proc = _start_main(wd, "--config.num_epochs=50")
  _assert_one_line_exit(*_interrupt_when(proc, "Compiling the training step"))
  assert not (wd / "checkpoints").exists() or not os.listdir(wd / "checkpoints")


def test_ctrl_c_while_resuming_exits_at_once_and_leaves_the_run(tmp_path):
  """Issue 29: SIGINT while a run resumes; its checkpoints and scores are left as they were."""
  wd = tmp_path / "run"
  first = _start_main(wd, "--config.num_epochs=1")
  assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
  first.stderr.close()
  before = snapshot(wd / "checkpoints")
  proc = _start_main(wd, "--config.num_epochs=50")
  _assert_one_line_exit(*_interrupt_when(proc, "Resumed from step"))
  assert snapshot(wd / "checkpoints") == before


def test_smoke_run_on_real_archive_then_sample(cifar_archive, tmp_path):
  """The README's first command (shortened to one epoch), then the sample CLI."""
  wd = tmp_path / "smoke"
  r = run_cli(
    "cgan_jax.main",
    "--config=configs/cifar64.py:smoke",
    "--config.num_epochs=1",
    "--config.eval.enabled=False",  # IS/FID in training: tests/test_evaluation.py
    "--config.data.source=cifar_archive",
    f"--config.data.path={cifar_archive}",
    f"--workdir={wd}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "steps/s" in r.stderr and "ETA" in r.stderr
  assert os.listdir(wd / "checkpoints") == ["16"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))
  assert sorted(os.listdir(wd / "samples")) == ["step_00000016_g0.png", "step_00000016_g1.png"]
  r = run_cli("cgan_jax.sample", f"--workdir={wd}", "--num=5", f"--out={tmp_path}/s.npz")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Wrote 5 samples x 2 generators from step 16" in r.stdout


CLIS = (
  "cgan_jax.main",
  "cgan_jax.sample",
  "cgan_jax.evaluate",
  "cgan_jax.fid",
  "cgan_jax.reproduce",
)


def test_the_cli_modules_import_together():
  """Their flags are defined only when run as programs, so no flag is defined twice."""
  import importlib

  for name in CLIS:
    importlib.import_module(name)


@pytest.mark.parametrize("module", CLIS)
def test_help_exits_0(module):
  r = run_cli(module, "--help")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Flags:" in r.stdout and "Traceback" not in r.stderr
  if module == "cgan_jax.main":
    for text in ("configs/cifar64.py:", "proposed3", "configs/cifar32_cpu.py:", "--print_config"):
      assert text in r.stdout, text


def test_config_file_mistakes_are_one_line(tmp_path):
  r = run_cli("cgan_jax.main", "--config=configs/nope.py", f"--workdir={tmp_path}/w")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip() == (
    f"error: --config=configs/nope.py: no config file at 'configs/nope.py' "
    f"(resolved: {ROOT / 'configs/nope.py'})"
  )
  r = run_cli("cgan_jax.main", "--config=configs/cifar64.py:smoke", "--print_config")
  assert r.returncode == 0 and "transfer_reduction: mean" in r.stdout, r.stderr[-2000:]


def test_sample_checks_its_output_before_generating(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  r = run_cli("cgan_jax.sample", f"--workdir={tmp_path}/none", f"--out={blocker}/s.npz")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip() == (
    f"error: --out='{blocker}/s.npz' cannot be written: its folder='{blocker}' exists and is "
    "not a directory"
  )


def test_fid_with_a_corrupt_weights_file_is_one_line(tmp_path):
  bad = tmp_path / "inception.pt"
  bad.write_bytes(b"PK\x03\x04 not a real TorchScript archive")
  a = tmp_path / "a.npz"
  np.savez(a, images=np.zeros((4, 8, 8, 3), np.uint8))
  r = run_cli("cgan_jax.fid", str(a), str(a), f"--weights={bad}")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
  assert len(errors) == 1 and "is not a readable Inception weights file" in errors[0], r.stderr


def test_weights_messages_name_the_cli_flag(monkeypatch):
  from cgan_jax.errors import ConfigError
  from cgan_jax.quality import weights as weights_lib

  def unavailable(allow_download, retry=True):
    raise weights_lib.WeightsUnavailable("offline: pass its path in config.eval.inception_weights")

  monkeypatch.setattr(weights_lib, "_load_full", unavailable)
  with pytest.raises(ConfigError) as e:
    weights_lib.load_weights_for_cli("full")
  assert "config.eval" not in str(e.value) and "pass its path in --weights" in str(e.value)


def test_offline_tfds_fails_at_once(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  from cgan_jax.errors import ConfigError
  from cgan_jax.run import input_pipeline

  monkeypatch.setattr(input_pipeline, "cannot_reach", lambda host, port: "OSError: offline (test)")
  with pytest.raises(ConfigError, match=r"cannot be reached \(OSError: offline \(test\)\)"):
    input_pipeline.load_tfds(str(tmp_path / "tfds"))
  assert not (tmp_path / "tfds").exists() or not any((tmp_path / "tfds").rglob("*"))


def test_a_corrupt_config_json_is_one_line_for_sample(tmp_path):
  wd = tmp_path / "run"
  wd.mkdir()
  (wd / "config.json").write_text('{"method": "proposed", "mod')
  r = run_cli("cgan_jax.sample", f"--workdir={wd}", "--num=4", f"--out={tmp_path / 's.npz'}")
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().startswith("error: --workdir=") and "is unreadable" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_print_config_validates(tmp_path):
  r = run_cli(
    "cgan_jax.main",
    "--config=configs/cifar64.py",
    "--config.train.log_every_steps=0",
    "--print_config",
  )
  assert r.returncode == 2
  assert r.stderr.strip() == "error: config.train.log_every_steps=0 must be an integer >= 1"
