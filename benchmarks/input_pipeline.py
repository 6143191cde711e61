"""Input pipeline throughput next to training throughput: does the pipeline starve the step?

  python benchmarks/input_pipeline.py --config=configs/cifar64.py:smoke \
      --config.data.source=cifar_archive --steps=20

Prints host->device input images/s (archive already in memory; gather, copy to the device
and on-device resize + scaling, as in training) and training images/s of the jitted step
for the same config, both after warm-up.
"""

import time

import jax
from absl import app, flags
from ml_collections import config_flags

from cgan_jax import configlib
from cgan_jax.run import builder, input_pipeline, parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/cifar64.py:smoke", "Config.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")


def main(argv):
  del argv
  config = FLAGS.config
  configlib.validate_config(config)
  mesh = parallel.make_mesh()
  sharding = parallel.data_sharding(mesh)
  images = input_pipeline.load_images(config)
  b, size = config.train.batch_size, config.data.image_size
  preprocess = jax.jit(lambda raw: input_pipeline.preprocess(raw, size))

  def batches(n):
    epoch = 0
    while True:
      for raw in input_pipeline.EpochBatches(images, b, config.seed, epoch):
        if n == 0:
          return
        n -= 1
        yield raw
      epoch += 1

  it = input_pipeline.prefetch_to_device(batches(2), config.data.prefetch, sharding)
  for raw in it:
    preprocess(raw).block_until_ready()
  t0 = time.perf_counter()
  for raw in input_pipeline.prefetch_to_device(
    batches(FLAGS.steps), config.data.prefetch, sharding
  ):
    out = preprocess(raw)
  out.block_until_ready()
  input_ips = FLAGS.steps * b / (time.perf_counter() - t0)

  # Jitted, sharded and compiled as training does it (donated state, CPU compiler options).
  program = builder.build(config, mesh)
  step = program.step
  st = program.init_state(config, jax.random.PRNGKey(0))
  ga = program.hparams(config, steps_per_epoch=100)
  raw = next(iter(input_pipeline.EpochBatches(images, b, config.seed, 0)))
  real = preprocess(jax.device_put(raw, sharding))
  for _ in range(2):
    st, m = step(st, real, ga)
  jax.block_until_ready(st)
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    st, m = step(st, real, ga)
  jax.block_until_ready(st)
  train_ips = FLAGS.steps * b / (time.perf_counter() - t0)
  print(
    f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}  "
    f"batch {b}, {size}px, k={config.model.k}"
  )
  print(f"input images/s:    {input_ips:10.1f}")
  print(f"training images/s: {train_ips:10.1f}")
  print(f"input / training:  {input_ips / train_ips:10.1f}x")


if __name__ == "__main__":
  app.run(main)
