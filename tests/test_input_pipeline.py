"""Input pipeline: archive layout, determinism, process split, preprocessing."""

import io
import pickle
import tarfile

import jax.numpy as jnp
import numpy as np
import pytest

from cgan_jax.errors import ConfigError
from cgan_jax.run import input_pipeline


def _write_fake_archive(path, n_per_batch=4):
  """A cifar-10-python.tar.gz in the standard layout with known pixels."""
  rng = np.random.default_rng(0)
  expected = []
  with tarfile.open(path, "w:gz") as tar:
    for i in range(1, 6):
      hwc = rng.integers(0, 256, size=(n_per_batch, 32, 32, 3), dtype=np.uint8)
      expected.append(hwc)
      rows = hwc.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072)  # 1024 R, 1024 G, 1024 B
      raw = pickle.dumps({b"data": rows, b"labels": [0] * n_per_batch}, protocol=2)
      info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{i}")
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
  return np.concatenate(expected)


def test_archive_and_extracted_folder_give_hwc_images(tmp_path):
  path = tmp_path / "cifar-10-python.tar.gz"
  expected = _write_fake_archive(path)
  np.testing.assert_array_equal(input_pipeline.load_cifar_archive(str(path)), expected)
  with tarfile.open(path) as tar:
    tar.extractall(tmp_path / "x", filter="data")
  for folder in (tmp_path / "x", tmp_path / "x" / "cifar-10-batches-py"):
    np.testing.assert_array_equal(input_pipeline.load_cifar_archive(str(folder)), expected)


def test_truncated_archive_is_a_clear_error(tmp_path):
  path = tmp_path / "cifar-10-python.tar.gz"
  _write_fake_archive(path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ConfigError, match=r"config.data.path=.* (not a readable|not a complete)"):
    input_pipeline.load_cifar_archive(str(path))


def test_real_archive(cifar_archive):
  images = input_pipeline.load_cifar_archive(str(cifar_archive))
  assert images.shape == (50000, 32, 32, 3) and images.dtype == np.uint8
  assert 100 < images.mean() < 140  # natural images, not noise or zeros


def test_epoch_order_is_a_function_of_seed_and_epoch():
  a = input_pipeline.epoch_permutation(100, 3, 7)
  np.testing.assert_array_equal(a, input_pipeline.epoch_permutation(100, 3, 7))
  assert not np.array_equal(a, input_pipeline.epoch_permutation(100, 3, 8))
  assert sorted(a) == list(range(100))


def test_batches_resume_mid_epoch_and_split_over_processes():
  images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
  full = list(input_pipeline.EpochBatches(images, 8, seed=1, epoch=2))
  assert len(full) == 5
  resumed = list(input_pipeline.EpochBatches(images, 8, seed=1, epoch=2, start=3))
  for a, b in zip(full[3:], resumed, strict=True):
    np.testing.assert_array_equal(a, b)
  halves = [list(input_pipeline.EpochBatches(images, 8, 1, 2, 0, p, 2)) for p in range(2)]
  for t in range(5):
    np.testing.assert_array_equal(np.concatenate([halves[0][t], halves[1][t]]), full[t])


def test_preprocess_resizes_and_scales():
  raw = np.zeros((2, 32, 32, 3), np.uint8)
  raw[:, :, :, 0] = 255
  x = input_pipeline.preprocess(jnp.asarray(raw), 64)
  assert x.shape == (2, 64, 64, 3)
  np.testing.assert_allclose(x[..., 0], 1.0)
  np.testing.assert_allclose(x[..., 1], -1.0)
