"""Search throughput: the smoke search's trials/hour with its train/eval split, and an
estimate of the paper's search (1,500 trials x 200 epochs) from a timed step and a timed
Inception batch of the paper's setting on this machine.

  python benchmarks/search_throughput.py [--trials=4] [--paper_steps=3] [--paper_eval=200]

1. Runs `configs/search.py:smoke,k2` (`--trials` trials, one worker, in this process) in
   a new study folder and reads each trial's `train_s` / `eval_s` user attributes. The
   first trial also compiles the step and Inception and computes the FID reference, so
   the steady rate is taken over the later trials.
2. Times `--paper_steps` training steps of the paper's search trial (`configs/search.py`:
   64 px, k = 3, batch 256, feature transfer) after compiling, and `--paper_eval` Inception
   images at the search's eval batch size. The estimate per trial is
   200 epochs x 195 steps x step time + 40 evaluations x 3 generators x 5,000 samples /
   Inception images per second (sample generation and FID maths are left out: they are
   small next to both). `--paper_steps=0` skips this part.

Prints a markdown table (benchmarks/README.md, "Search throughput").
"""

import os
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_integer("trials", 4, "Smoke-search trials.")
  flags.DEFINE_integer("paper_steps", 3, "Timed steps of the paper's trial (0: skip).")
  flags.DEFINE_integer("paper_eval", 200, "Timed Inception images at the paper's setting.")
  flags.DEFINE_string("study_dir", None, "Study folder (default: a new temporary one).")


def smoke_search(trials: int, study_dir: str) -> dict:
  import optuna

  from cgan_jax import configlib
  from cgan_jax.search import space
  from cgan_jax.search import study as study_lib

  c = configlib.load_config(os.path.join(ROOT, "configs", "search.py") + ":smoke,k2")
  c.search.num_trials = trials
  space.validate(c)
  start = time.perf_counter()
  study_lib.run_worker(c, study_dir, "", 0, "configs/search.py:smoke,k2", [])
  wall = time.perf_counter() - start
  storage = study_lib.open_storage(study_dir, "", None)
  done = optuna.load_study(study_name=c.search.study_name, storage=storage).trials
  trained = [t for t in done if "duplicate_of" not in t.user_attrs]
  later = trained[1:] or trained
  return {
    "trials": len(done),
    "wall_s": wall,
    "first_train_s": trained[0].user_attrs["train_s"],
    "first_eval_s": trained[0].user_attrs["eval_s"],
    "train_s": sum(t.user_attrs["train_s"] for t in later) / len(later),
    "eval_s": sum(t.user_attrs["eval_s"] for t in later) / len(later),
    "samples": c.search.eval_samples,
  }


def paper_trial(steps: int, eval_images: int) -> dict:
  import jax
  import numpy as np

  from cgan_jax import configlib
  from cgan_jax.quality import evaluator
  from cgan_jax.quality import weights as weights_lib
  from cgan_jax.run import builder
  from cgan_jax.search import space

  base = configlib.load_config(os.path.join(ROOT, "configs", "search.py"))
  config = space.trial_config(base, {})
  config.data.source = "synthetic"
  program = builder.build(config)
  state = program.init_state(config, jax.random.PRNGKey(0))
  hparams = program.hparams(config, steps_per_epoch=195)
  b, s = config.train.batch_size, config.data.image_size
  raw = jax.device_put(np.zeros((b, s, s, 3), np.uint8), program.data_sharding)
  t0 = time.perf_counter()
  state, m = program.step_on_raw(state, raw, hparams)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = program.step_on_raw(state, raw, hparams)
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / steps
  weights = weights_lib.load_weights(config.eval.inception_weights)
  extractor = evaluator.InceptionExtractor(weights, batch_size=config.eval.batch_size)
  images = np.zeros((min(eval_images, config.eval.batch_size), s, s, 3), np.uint8)
  extractor(images)  # compile
  t0 = time.perf_counter()
  done = 0
  while done < eval_images:
    extractor(images)
    done += len(images)
  ips = done / (time.perf_counter() - t0)
  sc = base.search
  steps_per_trial = sc.num_epochs * (50_000 // b)
  evals = sc.num_epochs // sc.eval_every_epochs
  train_h = steps_per_trial * step_s / 3600
  eval_h = evals * base.model.k * sc.eval_samples / ips / 3600
  return {
    "compile_s": compile_s,
    "step_s": step_s,
    "inception_ips": ips,
    "weights": weights.name,
    "trial_train_h": train_h,
    "trial_eval_h": eval_h,
    "search_h": sc.num_trials * (train_h + eval_h),
    "num_trials": sc.num_trials,
    "steps_per_trial": steps_per_trial,
    "evals": evals,
  }


def main(argv):
  del argv
  import jax

  device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  study_dir = FLAGS.study_dir or tempfile.mkdtemp(prefix="cgan_search_bench_")
  smoke = smoke_search(FLAGS.trials, study_dir)
  rate = 3600 / (smoke["train_s"] + smoke["eval_s"])
  print(f"\nDevice: {device}; study: {study_dir}")
  print("| measure | value |")
  print("|---|---|")
  print(
    f"| smoke search (`search.py:smoke,k2`), {smoke['trials']} trials, wall | "
    f"{smoke['wall_s']:.0f} s |"
  )
  print(
    f"| first trial (compiles, FID reference): train / eval | {smoke['first_train_s']:.1f} s / "
    f"{smoke['first_eval_s']:.1f} s |"
  )
  print(
    f"| later trials, mean: train / eval ({smoke['samples']} samples x 2 generators) | "
    f"{smoke['train_s']:.1f} s / {smoke['eval_s']:.1f} s |"
  )
  print(f"| steady rate, one worker | {rate:.0f} trials/h |")
  if FLAGS.paper_steps:
    p = paper_trial(FLAGS.paper_steps, FLAGS.paper_eval)
    print(
      f"| paper trial step (64 px, k = 3, batch 256), compile + first step | "
      f"{p['compile_s']:.1f} s |"
    )
    print(f"| paper trial step, mean of {FLAGS.paper_steps} | {p['step_s']:.3f} s |")
    print(f"| Inception ({p['weights']}) | {p['inception_ips']:.1f} images/s |")
    print(
      f"| estimate per trial: {p['steps_per_trial']} steps + {p['evals']} evaluations | "
      f"{p['trial_train_h']:.2f} h + {p['trial_eval_h']:.2f} h |"
    )
    print(
      f"| estimate, {p['num_trials']} trials on this device, one worker | "
      f"{p['search_h']:.0f} h ({p['search_h'] / 24:.1f} days) |"
    )


if __name__ == "__main__":
  define_flags()
  app.run(main)
