"""Populations: member-steps/s, trials/hour, memory and MFU for P members in one step.

  python benchmarks/population_throughput.py                        # both settings, P = 1..64
  python benchmarks/population_throughput.py --settings=smoke --sizes=1,2,4 --steps=5

Times exactly the step `population.train_population` runs (`population.build`, compiled
ahead of time by `population.compile_step`, images on the device, a fresh [P, b] index
array per step), for P = --sizes members of one structure with different seeds and
different random gates (traced: one compile per P). Settings:

  paper   the paper's search setting (`configs/search.py`, Table 3): 64 px, k = 3, widths
          64, batch 256, feature maps of layers 3 and 4, 'paper' D updates
  smoke   `configs/search.py:smoke`'s size: 32 px, k = 3, widths 4, batch 16

Per P: the median over --rounds rounds of --steps steps (after --warmup), member-steps/s
(P over the step time), the speed-up of member-steps/s over P = 1, device memory (the
allocator's peak on a GPU, XLA's estimate elsewhere), XLA's cost analysis FLOPs (of the
HLO before the backend's passes, the same on every backend), MFU
against the measured float32 matmul peak, and trials/hour of training (a trial: the
setting's search epochs x steps per epoch of 50,000 images). Sizes that XLA's memory
analysis says do not fit are reported and skipped; once --budget_s is spent, larger P are
skipped too (said so). Then an ESTIMATE of the 1,500-trial search on this device from these
numbers plus the evaluation (--inception_rate images/s). The last line is the speed-up at
the largest P measured against P = 1 (the first setting).
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cgan_jax import configlib  # noqa: E402
from cgan_jax.core import gates as gates_lib  # noqa: E402
from cgan_jax.core import models  # noqa: E402
from cgan_jax.run import builder, population  # noqa: E402

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_IMAGES = 50_000


def setting_config(name: str):
  spec = "configs/search.py:table3" + (",smoke" if name == "smoke" else "")
  config = configlib.load_config(os.path.join(ROOT, spec))
  search = config.search
  with config.unlocked():
    del config["search"]
  config.num_epochs = search.num_epochs
  config.data.source = "synthetic"
  config.population.member_map = FLAGS.member_map
  if FLAGS.conv_impl:
    config.model.conv_impl = FLAGS.conv_impl
  configlib.validate_config(config)
  return config, search


def random_gates(config, seed: int) -> None:
  """Gates drawn per member, as a search would (text form of the config)."""
  rng = np.random.default_rng(seed)
  k, names = config.model.k, gates_lib.GATE_NAMES
  config.graph.gates_d = ",".join(rng.choice(names) for _ in range(k))
  rows = []
  for t in range(k):
    rows.append(",".join("-" if s == t else rng.choice(names) for s in range(k)))
  config.graph.gates_transfer = ";".join(rows)


def matmul_peak_flops(seconds: float = 2.0) -> float:
  """Measured float32 FLOP/s of a square jnp.matmul (n = 2048 on CPU, 8192 elsewhere)."""
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


def peak_memory_bytes() -> int | None:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def make_stepper(config, size: int, num_images: int):
  """Compiles the population step of `size` members and warms it up.

  Returns:
    (time_round, info): time_round(n) runs n more steps and returns their mean seconds per
    step; info has the compile time, FLOPs and memory, or {'fits': False, ...} (and no
    time_round) when XLA's memory analysis says the step does not fit.
  """
  configs = []
  for m in range(size):
    c = config.copy_and_resolve_references()
    c.seed = m
    random_gates(c, m)
    configs.append(c)
  population.check_members(configs)
  program = population.build(config, size)
  t0 = time.perf_counter()
  compiled, est = population.compile_step(program, config, num_images)
  compile_s = time.perf_counter() - t0
  if est.total_bytes > 0.9 * est.limit_bytes:
    return None, {"fits": False, "need_gb": est.total_bytes / 2**30, "compile_s": compile_s}
  b = config.train.batch_size
  states = program.put_states(
    [program.solo.init_state(c, jax.random.PRNGKey(c.seed)) for c in configs]
  )
  hparams = program.put_hparams([builder.step_hparams(c, TRAIN_IMAGES // b) for c in configs])
  rng = np.random.default_rng(0)
  images = program.put_images([rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8)])
  indices = [
    program.put_index(rng.integers(0, num_images, (size, b)).astype(np.int32), b) for _ in range(4)
  ]
  active = program.put_active([True] * size)
  holder = {"states": states}

  def time_round(n: int) -> float:
    states = holder.pop("states")
    t0 = time.perf_counter()
    for i in range(n):
      states, metrics = compiled(states, images, indices[i % 4], hparams, active)
    jax.block_until_ready((states, metrics))
    seconds = (time.perf_counter() - t0) / max(n, 1)
    holder["states"] = states
    if not np.all(np.isfinite(program.metrics_by_member(jax.device_get(metrics))["d_loss"])):
      raise RuntimeError(f"P={size}: non-finite loss")
    return seconds

  time_round(FLAGS.warmup)
  peak = peak_memory_bytes()
  return time_round, {
    "fits": True,
    "compile_s": compile_s,
    "flops": est.flops,
    "memory_gb": (peak if peak is not None else est.total_bytes) / 2**30,
    "memory_kind": "peak so far" if peak is not None else "XLA estimate",
  }


def measure(reference, config, size: int, num_images: int):
  """Times P = `size` in rounds that alternate with the P = 1 `reference` stepper, so that
  a machine whose speed drifts (a shared VM) slows both alike; the speed-up is the median
  of the per-round ratios of member-steps/s."""
  if size == 1:
    time_round, info = reference
  else:
    time_round, info = make_stepper(config, size, num_images)
  if not info["fits"]:
    return info
  times, ratios = [], []
  for _ in range(FLAGS.rounds):
    t1 = reference[0](FLAGS.steps) if size > 1 else None
    tp = time_round(FLAGS.steps)
    times.append(tp)
    ratios.append(1.0 if t1 is None else size * t1 / tp)
  return {**info, "step_s": statistics.median(times), "speedup": statistics.median(ratios)}


def machine() -> str:
  import platform

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  dev = jax.devices()[0]
  accel = f", {dev.device_kind}" if dev.platform != "cpu" else ""
  return (
    f"{cpu}, {os.cpu_count()} CPU threads{accel}; JAX {jax.__version__} "
    f"({jax.default_backend()}, {len(jax.devices())} device(s))"
  )


def main(argv):
  del argv
  start = time.perf_counter()
  models.conv_grads_vmap = FLAGS.conv_grads
  sizes = [int(s) for s in FLAGS.sizes]
  peak = FLAGS.peak_tflops * 1e12 if FLAGS.peak_tflops > 0 else matmul_peak_flops()
  print(f"# {machine()}")
  how = configlib.population_member_map(setting_config(FLAGS.settings[0])[0])
  print(
    f"# float32 matmul peak {peak / 1e12:.1f} TFLOP/s "
    f"({'given' if FLAGS.peak_tflops else 'measured'}); member_map={FLAGS.member_map} "
    f"(-> {how}), conv_impl={FLAGS.conv_impl or 'config'}, conv_grads={FLAGS.conv_grads}; "
    f"{FLAGS.rounds} rounds of {FLAGS.steps} "
    f"steps after {FLAGS.warmup}",
    flush=True,
  )
  headline = None
  for name in FLAGS.settings:
    config, search = setting_config(name)
    spe = (config.data.num_train or TRAIN_IMAGES) // config.train.batch_size
    trial_steps = search.num_epochs * spe
    print(
      f"\n## {name}: {config.data.image_size} px, k = {config.model.k}, widths "
      f"{config.model.g_width}, batch {config.train.batch_size}, transfer "
      f"{config.graph.transfer}, d_update {config.train.d_update}; a trial = "
      f"{search.num_epochs} epochs x {spe} steps = {trial_steps} steps\n"
    )
    print(
      "| P | ms/step | member-steps/s | speed-up vs P=1 | trials/h (training) | memory GiB |"
      " GFLOP/step | MFU | compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = {}
    reference = make_stepper(config, 1, FLAGS.num_images)
    for size in sizes:
      if time.perf_counter() - start > FLAGS.budget_s:
        print(f"| {size} | skipped: the --budget_s={FLAGS.budget_s} s budget is spent |")
        continue
      r = measure(reference, config, size, FLAGS.num_images)
      if not r["fits"]:
        print(
          f"| {size} | does not fit: XLA estimates {r['need_gb']:.1f} GiB "
          f"(compile {r['compile_s']:.1f} s) |",
          flush=True,
        )
        break
      rate = size / r["step_s"]
      results[size] = (r, rate)
      mfu = r["flops"] / r["step_s"] / peak
      print(
        f"| {size} | {1e3 * r['step_s']:.1f} | {rate:.1f} | {r['speedup']:.2f}x | "
        f"{rate * 3600 / trial_steps:.2f} | {r['memory_gb']:.2f} ({r['memory_kind']}) | "
        f"{r['flops'] / 1e9:.1f} | {100 * mfu:.1f}% | {r['compile_s']:.1f} |",
        flush=True,
      )
    if not results:
      continue
    best = max(results)
    if headline is None and 1 in results:
      r = results[best][0]
      headline = (name, best, r["speedup"], r["step_s"] / results[1][0]["step_s"])
    if name != "paper":
      continue
    best = max(results)
    r, rate = results[best]
    evals = search.num_epochs // search.eval_every_epochs
    eval_images = evals * config.model.k * search.eval_samples
    eval_h = search.num_trials * eval_images / FLAGS.inception_rate / 3600
    for size, label in ((1, "one trial at a time"), (best, f"P = {best} per step")):
      if size in results:
        train_h = search.num_trials * trial_steps / results[size][1] / 3600
        print(
          f"ESTIMATE ({name}): {search.num_trials} trials, {label}: training "
          f"{train_h:.1f} h + evaluation {eval_h:.1f} h ({evals} evaluations x {config.model.k}"
          f" x {search.eval_samples} samples per trial at {FLAGS.inception_rate:,.0f} "
          f"Inception images/s) = {train_h + eval_h:.1f} h"
        )
    per_member = results[1][0]["flops"] if 1 in results else float("nan")
    if np.isfinite(per_member):
      floor_h = search.num_trials * trial_steps * per_member / peak / 3600
      print(
        f"FLOOR ({name}): {search.num_trials} trials x {trial_steps} steps x "
        f"{per_member / 1e9:.0f} GFLOP at 100% of the {peak / 1e12:.2f} TFLOP/s matmul peak: "
        f"{floor_h:.1f} h of training"
      )
  print(f"\n# total {time.perf_counter() - start:.0f} s")
  if headline is not None:
    name, best, speedup, time_ratio = headline
    print(
      f"speed-up at P={best} against P=1 ({name}): {speedup:.2f}x member-steps/s "
      f"(step time {time_ratio:.2f}x)"
    )


def define_flags() -> None:
  flags.DEFINE_list("settings", ["paper", "smoke"], "paper, smoke (in this order).")
  flags.DEFINE_list("sizes", ["1", "2", "4", "8", "16", "32", "64"], "Population sizes P.")
  flags.DEFINE_integer("steps", 10, "Timed steps per round.")
  flags.DEFINE_integer("rounds", 3, "Rounds (the median is reported).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
  flags.DEFINE_integer("num_images", 4096, "Random uint8 training images on the device.")
  flags.DEFINE_enum("member_map", "auto", list(configlib.MEMBER_MAPS), "Population map.")
  flags.DEFINE_enum("conv_grads", "auto", list(models.CONV_GRADS_VMAPS), "models.conv_grads_vmap.")
  flags.DEFINE_enum(
    "conv_impl", "", ["", *models.CONV_IMPLS], "config.model.conv_impl ('': the config's)."
  )
  flags.DEFINE_float("peak_tflops", 0.0, "float32 peak for MFU (0: measure a matmul).")
  flags.DEFINE_float(
    "inception_rate",
    14_552.0,
    "Inception images/s for the estimate (default: the H200's, measured; about 12 on 2 CPU cores).",
  )
  flags.DEFINE_float("budget_s", 270.0, "Skip further sizes once this many seconds passed.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
