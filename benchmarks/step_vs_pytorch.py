"""One training step in JAX (this project) and the same step in PyTorch, timed in one run.

  python benchmarks/step_vs_pytorch.py --k=3 --image_size=32 --batch_size=64 --steps=5
  python benchmarks/step_vs_pytorch.py --all --steps=2  # the table in benchmarks/README.md

Both sides run the same models, losses and update sequence on the same device:

  * k DCGAN generators (Linear -> BN -> ReLU, then 4x4 stride-2 transposed convs with BN
    and ReLU, a tanh image) and one discriminator with k + 1 logits, spectral norm on
    every layer (torch: `parametrizations.spectral_norm`, one power iteration per D
    update, none in the G update, like flax's `SpectralNorm(update_stats=...)`).
  * The paper's D sequence (`d_update='paper'`): for i = 1..k, an Adam step of D on the
    real batch, then one on a fresh batch of G_i. Then one Adam step of every generator on
    Gate(L_D,i) + sum_t Gate(L_t,i) with the same z for all; 'through' gates.
  * Transfer: `--transfer=image` (eq. 5, the paper's Table 1 setting) or
    `feature_output_side` (eq. 3-4, Table 3); k = 1 runs DCGAN+SN (no transfer).

The JAX side is exactly what training runs (`builder.build`, one jitted step); the
PyTorch side is a straightforward eager implementation (a list of k generators, one Adam
for each network), and, with --torch_compile, the same with every module wrapped in
`torch.compile`. Each side is compiled and warmed up (--warmup steps), then timed in
--rounds rounds that alternate the sides (JAX, eager, compiled), so that a machine whose
speed drifts (a shared VM) slows all of them alike; a round's time is the mean over
--steps steps, a side's time the median over rounds, and a ratio the median of the
per-round ratios; images/s counts the batch of real images per step.

Also reported: the JAX compile time, XLA's cost analysis of the step (FLOPs), and those
FLOPs per second as a fraction of the measured float32 peak of a plain jnp.matmul on the
same device ("MFU"). The last line is `torch/jax step time ratio: <x>` (eager PyTorch
time over JAX time, > 1 means JAX is faster); with several cases it is their geometric
mean.
"""

import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cgan_jax import configlib
from cgan_jax.core import graph as graph_lib
from cgan_jax.core import models
from cgan_jax.run import builder

FLAGS = flags.FLAGS
# ---------------------------------------------------------------------------------------
# The JAX side: what `train_and_evaluate` runs.


def jax_config(k: int, image_size: int, batch_size: int, transfer: str):
  variant = "dcgan_sn" if k == 1 else "proposed"
  config = configlib.load_config(f"configs/cifar64.py:{variant}")
  config.model.k = k
  config.data.image_size = image_size
  config.train.batch_size = batch_size
  config.train.d_update = "paper"
  if k > 1:
    config.graph.transfer = transfer
  configlib.validate_config(config)
  return config


def jax_stepper(config, warmup: int):
  """Compiles and warms up the JAX step.

  Returns:
    (time_steps, info): time_steps(n) runs n more steps and returns their mean seconds
    per step; info holds the compile time and XLA's cost-analysis FLOPs of one step.
  """
  program = builder.build(config)
  state = program.init_state(config, jax.random.PRNGKey(0))
  graph = program.hparams(config, steps_per_epoch=100)
  s, b = config.data.image_size, config.train.batch_size
  real = jax.random.uniform(jax.random.PRNGKey(1), (b, s, s, 3), minval=-1.0, maxval=1.0)
  real = jax.device_put(real, program.data_sharding)
  t0 = time.perf_counter()
  compiled = program.step.lower(state, real, graph).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  for _ in range(warmup):
    state, _ = compiled(state, real, graph)
  jax.block_until_ready(state)

  def time_steps(n: int) -> float:
    nonlocal state
    t0 = time.perf_counter()
    for _ in range(n):
      state, metrics = compiled(state, real, graph)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / n
    if not np.isfinite(float(metrics["d_loss"])):
      raise RuntimeError("JAX step produced a non-finite loss")
    return step_s

  return time_steps, {"compile_s": compile_s, "flops": flops}


def matmul_peak_flops(seconds: float = 2.0) -> float:
  """Measured float32 FLOP/s of a square jnp.matmul (n = 2048 on CPU, 8192 on GPU/TPU)."""
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, a).block_until_ready()
  best, t_end = float("inf"), time.perf_counter() + seconds
  while time.perf_counter() < t_end:
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


# ---------------------------------------------------------------------------------------
# The PyTorch side: the same models and step, written the usual PyTorch way.


def torch_init_(module, scheme: str) -> None:
  """Initialises a PyTorch layer in place as `models.initializers(scheme, ...)` does.

  'dcgan': N(0, 0.02) weights, zero biases, BatchNorm weight N(1, 0.02) (the DCGAN
  example's `weights_init`); 'torch': PyTorch's own defaults (nothing to do).
  """
  from torch import nn

  if scheme == "torch":
    return
  if scheme != "dcgan":
    raise ValueError(f"the PyTorch twin supports init 'dcgan' and 'torch', not {scheme!r}")
  for m in module.modules():
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
      nn.init.normal_(m.weight, 0.0, 0.02)
      if m.bias is not None:
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.normal_(m.weight, 1.0, 0.02)
      nn.init.zeros_(m.bias)


def torch_models(config, device):
  """k PyTorch generators and one discriminator, the twins of `models.Generator` /
  `models.Discriminator` (layers, widths, norms and init `config.model.init`)."""
  import torch
  from torch import nn
  from torch.nn.utils.parametrizations import spectral_norm

  z_dim, gw, dw = config.model.z_dim, config.model.g_width, config.model.d_width
  k, s = config.model.k, config.data.image_size
  n_layers = models.num_generator_layers(s)
  scheme = configlib.init_scheme(config)
  batch_norm_d = configlib.d_norm(config) == "batch"

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      self.ch = 8 * gw
      self.fc = nn.Linear(z_dim, 16 * self.ch, bias=False)
      self.bn0 = nn.BatchNorm2d(self.ch)
      blocks, ch = [], self.ch
      for _ in range(n_layers - 2):
        blocks.append(
          nn.Sequential(
            nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ch // 2),
            nn.ReLU(),
          )
        )
        ch //= 2
      self.blocks = nn.ModuleList(blocks)
      self.out = nn.ConvTranspose2d(ch, 3, 4, 2, 1)
      torch_init_(self, scheme)

    def forward(self, z):
      x = torch.relu(self.bn0(self.fc(z).view(-1, self.ch, 4, 4)))
      feats = [x]
      for block in self.blocks:
        x = block(x)
        feats.append(x)
      image = torch.tanh(self.out(x))
      feats.append(image)
      return image, feats

  def normed(layer):
    """Initialised first, then spectral norm (its 15 start-up power iterations see the
    initialised weight), or nothing for the BatchNorm baseline."""
    torch_init_(layer, scheme)
    return layer if batch_norm_d else spectral_norm(layer)

  class Discriminator(nn.Module):
    def __init__(self):
      super().__init__()
      layers, cin, ch = [], 3, dw
      for i in range(n_layers - 1):
        bn = batch_norm_d and i > 0  # as models.Discriminator: no bias before BatchNorm
        layers.append(normed(nn.Conv2d(cin, ch, 4, 2, 1, bias=not bn)))
        if bn:
          layers.append(normed(nn.BatchNorm2d(ch)))
        layers.append(nn.LeakyReLU(0.2))
        cin, ch = ch, ch * 2
      self.features = nn.Sequential(*layers)
      self.fc = normed(nn.Linear(cin * 16, k + 1))

    def forward(self, x):
      return self.fc(self.features(x).flatten(1))

  gens = [Generator().to(device) for _ in range(k)]
  disc = Discriminator().to(device)
  return gens, disc


def make_torch_step(config, device, compile_modules: bool):
  """(step(real) -> metrics, generators, discriminator): the paper's D sequence and one G
  update, as in steps.py. metrics holds detached tensors (reading them syncs): g_loss,
  d_loss, d_acc_real and d_acc_fake (means over the k D update pairs, as steps.py's)."""
  import torch
  import torch.nn.functional as F

  k, b, z_dim = config.model.k, config.train.batch_size, config.model.z_dim
  alpha, transfer = config.graph.alpha, config.graph.transfer
  layers = [m - 1 for m in graph_lib.transfer_layers(transfer)]
  gens, disc = torch_models(config, device)
  batch_norm_d = configlib.d_norm(config) == "batch"
  o = config.optim
  g_opt = torch.optim.Adam([p for g in gens for p in g.parameters()], o.g_lr, (o.b1, o.b2))
  d_opt = torch.optim.Adam(disc.parameters(), o.d_lr, (o.b1, o.b2))
  g_fns = [torch.compile(g) for g in gens] if compile_modules else gens
  d_fn = torch.compile(disc) if compile_modules else disc
  labels = [torch.full((b,), i, dtype=torch.long, device=device) for i in range(k + 1)]

  def d_update(x, label):
    d_opt.zero_grad(set_to_none=True)
    logits = d_fn(x)
    loss = F.cross_entropy(logits, labels[label])
    loss.backward()
    d_opt.step()
    return loss.detach(), (logits.detach().argmax(1) == label).float().mean()

  def normalise(x):
    flat = x.flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)

  def step(real):
    for g in gens:
      g.train()
    disc.train()
    for p in disc.parameters():
      p.requires_grad_(True)
    d_out = []
    for i in range(k):
      loss_r, acc_r = d_update(real, k)
      with torch.no_grad():
        fake, _ = g_fns[i](torch.randn(b, z_dim, device=device))
      loss_f, acc_f = d_update(fake, i)
      d_out.append((loss_r, loss_f, acc_r, acc_f))
    # Spectral norm: stored vectors, no power iteration. The BatchNorm baseline D stays in
    # train mode (batch statistics), as steps.py's.
    if not batch_norm_d:
      disc.eval()
    for p in disc.parameters():
      p.requires_grad_(False)
    z = torch.randn(b, z_dim, device=device)
    outs = [g(z) for g in g_fns]
    total = 0.0
    for image, _ in outs:
      total = total - F.log_softmax(d_fn(image), dim=1)[:, k].mean()
    if k > 1 and transfer != "none":
      if transfer == "image":
        reps = [[normalise(image)] for image, _ in outs]
      else:
        reps = [[normalise(feats[m].square().mean(1)) for m in layers] for _, feats in outs]
      for s in range(k):
        for t in range(k):
          if s != t:
            terms = [
              (rs - rt.detach()).square().mean() for rs, rt in zip(reps[s], reps[t], strict=True)
            ]
            total = total + alpha * torch.stack(terms).mean()
    g_opt.zero_grad(set_to_none=True)
    total.backward()
    g_opt.step()
    loss_r, loss_f, acc_r, acc_f = (torch.stack(v).mean() for v in zip(*d_out, strict=True))
    return {
      "g_loss": total.detach(),
      "d_loss": loss_r + loss_f,
      "d_acc_real": acc_r,
      "d_acc_fake": acc_f,
    }

  return step, gens, disc


def torch_stepper(config, warmup: int, compile_modules: bool):
  """Builds and warms up the PyTorch step (eager, or modules under torch.compile).

  Returns:
    time_steps(n): runs n more steps and returns their mean seconds per step.
  """
  import torch

  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  if compile_modules:
    # Each case compiles afresh: dynamo guards on the module instance, so k generators
    # (and D in train / eval mode) are separate graphs, and past the default limit of 8
    # per function it silently falls back to eager for the rest of the process.
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = 64
  step, _, _ = make_torch_step(config, device, compile_modules)
  s, b = config.data.image_size, config.train.batch_size
  real = torch.rand(b, 3, s, s, device=device) * 2 - 1

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  for _ in range(warmup):  # torch.compile compiles here
    step(real)
  sync()

  def time_steps(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
      loss = step(real)["g_loss"]
    sync()
    step_s = (time.perf_counter() - t0) / n
    if not math.isfinite(float(loss)):
      raise RuntimeError("PyTorch step produced a non-finite loss")
    return step_s

  return time_steps


# ---------------------------------------------------------------------------------------


def _cases():
  if FLAGS.all:
    batches = [64, 256] if jax.default_backend() == "gpu" else [64]
    return [(k, s, b) for b in batches for s in (32, 64) for k in (1, 2, 3, 4)]
  return [
    (int(k), int(s), int(b)) for b in FLAGS.batch_size for s in FLAGS.image_size for k in FLAGS.k
  ]


def _machine() -> str:
  import platform

  import torch

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  dev = jax.devices()[0]
  gpu = f", {dev.device_kind}" if dev.platform != "cpu" else ""
  return (
    f"{cpu}, {os.cpu_count()} CPU threads{gpu}; JAX {jax.__version__} ({jax.default_backend()},"
    f" {len(jax.devices())} device(s)), torch {torch.__version__}"
    f" ({torch.get_num_threads()} threads)"
  )


def main(argv):
  del argv
  import torch

  if FLAGS.torch_threads:
    torch.set_num_threads(FLAGS.torch_threads)
  cases = _cases()
  print(f"machine: {_machine()}")
  peak = matmul_peak_flops()
  print(f"measured float32 matmul peak: {peak / 1e9:.0f} GFLOP/s")
  print(
    f"transfer={FLAGS.transfer} (k >= 2), d_update=paper, float32; times are medians of"
    f" {FLAGS.rounds} round(s) of {FLAGS.steps} step(s) per side, the sides alternating;"
    " ratios are medians of the per-round ratios"
  )
  header = (
    "| k | px | batch | JAX s/step | JAX img/s | torch eager s/step | torch.compile s/step "
    "| torch/jax | torch.compile/jax | JAX compile s | GFLOP/step | MFU |"
  )
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  ratios, jax_times = [], {}
  for k, s, b in cases:
    config = jax_config(k, s, b, FLAGS.transfer)
    jax_run, j = jax_stepper(config, FLAGS.warmup)
    sides = {"jax": jax_run, "eager": torch_stepper(config, FLAGS.warmup, False)}
    compiled = "n/a"
    compiled_ratio = "n/a"
    if FLAGS.torch_compile:
      try:
        sides["compile"] = torch_stepper(config, FLAGS.warmup, True)
      except Exception as e:  # noqa: BLE001 - report, don't stop the table
        compiled = f"failed ({type(e).__name__})"
    # Rounds alternate the sides, so a machine that drifts (a shared VM) slows all alike.
    times = {side: [] for side in sides}
    for _ in range(FLAGS.rounds):
      for side, run in sides.items():
        times[side].append(run(FLAGS.steps))
    step_s = {side: statistics.median(t) for side, t in times.items()}
    ratio = statistics.median(e / t for e, t in zip(times["eager"], times["jax"], strict=True))
    if "compile" in times:
      compiled = f"{step_s['compile']:.3f}"
      c_ratio = statistics.median(
        c / t for c, t in zip(times["compile"], times["jax"], strict=True)
      )
      compiled_ratio = f"{c_ratio:.2f}"
    ratios.append(ratio)
    jax_s = jax_times[k, s, b] = step_s["jax"]
    mfu = j["flops"] / jax_s / peak
    print(
      f"| {k} | {s} | {b} | {jax_s:.3f} | {b / jax_s:.1f} | {step_s['eager']:.3f} "
      f"| {compiled} | {ratio:.2f} | {compiled_ratio} | {j['compile_s']:.1f} "
      f"| {j['flops'] / 1e9:.1f} | {100 * mfu:.1f}% |",
      flush=True,
    )
  if len(cases) > 1:
    for (k, s, b), t in jax_times.items():
      if k > 1 and (1, s, b) in jax_times:
        print(f"JAX time(k={k}) / time(k=1) at {s} px, batch {b}: {t / jax_times[1, s, b]:.2f}")
    gmean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"torch/jax step time ratio: {gmean:.2f} (geometric mean of {len(cases)} cases)")
  else:
    print(f"torch/jax step time ratio: {ratios[0]:.2f}")


def define_flags() -> None:
  """Flags are defined only when run as a script, so tests can import this module."""
  flags.DEFINE_list("k", ["3"], "Number(s) of generators.")
  flags.DEFINE_list("image_size", ["32"], "Image side(s): 32 or 64 (16, 128 also work).")
  flags.DEFINE_list("batch_size", ["64"], "Batch size(s).")
  flags.DEFINE_integer("steps", 5, "Timed steps per side, case and round.")
  flags.DEFINE_integer(
    "rounds", 3, "Timing rounds per case; each times every side in turn (JAX, eager, compile)."
  )
  flags.DEFINE_integer("warmup", 2, "Untimed steps first (JAX: after compiling).")
  flags.DEFINE_enum(
    "transfer", "image", ["image", "feature_output_side"], "Transfer edges for k >= 2."
  )
  flags.DEFINE_bool("torch_compile", True, "Also time PyTorch with torch.compile.")
  flags.DEFINE_bool(
    "all", False, "k = 1..4 at 32 and 64 px, batch 64 (and 256 on a GPU); overrides the lists."
  )
  flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: torch's default).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
