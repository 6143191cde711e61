"""Exports samples of every generator of a trained run.

  python -m cgan_jax.sample --workdir=DIR --num=N --out=FILE.npz
  python -m cgan_jax.sample --workdir=DIR --num=N --out=FOLDER   # PNGs: FOLDER/g0/000000.png

The .npz holds `images`, uint8 [k, N, H, W, 3]. The same workdir, checkpoint and --seed give
the same bytes. Latent n is shared by all generators (as in the paper's Figure 5). The PNG
folders can be read directly by pytorch-fid, torch-fidelity and clean-fid.
"""

import os

import jax
from absl import flags

from cgan_jax import cli
from cgan_jax.errors import ConfigError, check_writable
from cgan_jax.run import generate
from cgan_jax.run.restore import load_run_config, restore_run  # noqa: F401 - re-exported

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so that the CLI modules can be imported together."""
  flags.DEFINE_string("workdir", None, "Workdir of a training run.")
  flags.DEFINE_integer("num", 1000, "Samples per generator.")
  flags.DEFINE_string("out", None, "Output: FILE.npz, or a folder for PNGs.")
  flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
  flags.DEFINE_integer("seed", 0, "Seed of the latents.")
  flags.DEFINE_integer("batch_size", 250, "Generation batch size.")
  flags.DEFINE_bool("ema", False, "Use the EMA weights (needs model.ema_decay > 0).")


def export_samples(workdir, num, out, which="latest", seed=0, batch_size=250, ema=False):
  """Writes `num` samples per generator to `out` (.npz or a PNG folder); returns the array."""
  if num < 1:
    raise ConfigError(f"--num={num} must be >= 1")
  if batch_size < 1:
    raise ConfigError(f"--batch_size={batch_size} must be >= 1")
  if not out:
    raise ConfigError("--out is required (FILE.npz or a folder)")
  # before the checkpoint is read and the samples are generated
  if out.endswith(".npz"):
    check_writable(os.path.dirname(os.path.abspath(out)), "--out", out)
  else:
    check_writable(out, "--out")
  config, state, step, generator = restore_run(workdir, which)
  params = state.g_params
  if ema:
    if state.g_ema is None:
      raise ConfigError("--ema needs a run trained with config.model.ema_decay > 0")
    params = state.g_ema
  images = generate.generate_all(
    generate.make_generate_fn(generator),
    params,
    state.g_batch_stats,
    jax.random.PRNGKey(seed),
    num,
    config.model.z_dim,
    min(batch_size, num),
  )
  if out.endswith(".npz"):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    generate.save_npz_deterministic(out, images=images)
  else:
    for i in range(images.shape[0]):
      folder = os.path.join(out, f"g{i}")
      os.makedirs(folder, exist_ok=True)
      for n in range(images.shape[1]):
        generate.save_png(images[i, n], os.path.join(folder, f"{n:06d}.png"))
  print(
    f"Wrote {images.shape[1]} samples x {images.shape[0]} generators from step {step} "
    f"({which}) to {out}"
  )
  return images


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  export_samples(
    FLAGS.workdir, FLAGS.num, FLAGS.out, FLAGS.checkpoint, FLAGS.seed, FLAGS.batch_size, FLAGS.ema
  )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
