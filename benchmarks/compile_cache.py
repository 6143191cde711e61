"""Time to the first training step in a fresh process, with and without JAX's persistent
compilation cache (`builder.enable_compilation_cache`).

  python benchmarks/compile_cache.py [--config=configs/cifar32_cpu.py:proposed] [--runs=2]

Starts `--runs` fresh processes one after the other, all with one new, empty cache folder
(`$CGAN_JAX_COMPILE_CACHE`): the first compiles the step and writes it to the cache, the
later ones read it. Each process builds the run (`builder.build`), then times the first
call of the jitted step (trace, lower, compile or cache read, and one step) and a second
call (one step), after timing `init_state` (the jitted initial state, compiled without
LLVM's optimisation passes on the CPU, or read from the cache). Prints one line per process
and a markdown table.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
import jax, numpy as np
from cgan_jax import configlib
from cgan_jax.run import builder

config = configlib.load_config(sys.argv[1])
config.data.source = "synthetic"
configlib.validate_config(config)
program = builder.build(config)
t0 = time.perf_counter()
state = program.init_state(config, jax.random.PRNGKey(0))
jax.block_until_ready(state)
init = time.perf_counter() - t0
hparams = program.hparams(config, steps_per_epoch=100)
s, b = config.data.image_size, config.train.batch_size
raw = jax.device_put(np.zeros((b, 32, 32, 3), np.uint8), program.data_sharding)
t0 = time.perf_counter()
state, m = program.step_on_raw(state, raw, hparams)
jax.block_until_ready(m)
first = time.perf_counter() - t0
t0 = time.perf_counter()
state, m = program.step_on_raw(state, raw, hparams)
jax.block_until_ready(m)
second = time.perf_counter() - t0
print(json.dumps({"init_state_s": init, "first_step_s": first, "next_step_s": second,
                  "process_s": time.perf_counter() - t_start,
                  "cache": builder.enable_compilation_cache()}))
"""

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("config", "configs/cifar32_cpu.py:proposed", "Config file[:variants].")
  flags.DEFINE_integer("runs", 2, "Fresh processes, one after the other (>= 2).")


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as cache:
    env = {**os.environ, "CGAN_JAX_COMPILE_CACHE": cache, "PYTHONPATH": ROOT}
    for i in range(FLAGS.runs):
      t0 = time.perf_counter()
      r = subprocess.run(
        [sys.executable, "-c", CHILD, FLAGS.config],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
      )
      if r.returncode:
        sys.exit(f"process {i + 1} failed:\n{r.stderr[-3000:]}")
      out = json.loads(r.stdout.strip().splitlines()[-1])
      out["wall_s"] = time.perf_counter() - t0
      out["cache_files"] = len(os.listdir(cache))
      rows.append(out)
      print(f"process {i + 1}: {json.dumps(out)}")
  print(f"\n{FLAGS.config}, {os.cpu_count()} CPUs")
  print(
    "| process | cache | init_state, s | first step (compile + 1 step), s | next step, s "
    "| process wall, s |"
  )
  print("|---|---|---|---|---|---|")
  for i, row in enumerate(rows):
    state = "empty" if i == 0 else "warm"
    print(
      f"| {i + 1} | {state} | {row['init_state_s']:.2f} | {row['first_step_s']:.2f} "
      f"| {row['next_step_s']:.3f} "
      f"| {row['wall_s']:.1f} |"
    )


if __name__ == "__main__":
  define_flags()
  app.run(main)
