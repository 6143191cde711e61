"""Learning parity: this project's training against its PyTorch twin, trained alike.

  python benchmarks/train_parity.py --variant=dcgan_sn --seeds=0,1,2 --epochs=5
  python benchmarks/train_parity.py --variant=proposed --inits=dcgan,lecun --torch_inits=dcgan

Both sides train the same method (a `configs/cifar64.py` variant) from the same real
images in the same order (`input_pipeline.EpochBatches` of the seed), with the same models,
losses and update order: the JAX side is exactly what `train_and_evaluate` runs
(`builder.build`, the sharded jitted step); the PyTorch side is the twin in
`step_vs_pytorch.py` (eager). Each side draws its own initial weights and latents from its
own seed. After every epoch both record, per generator:

  diversity   the pixel std across --grid latents (images in [-1, 1], BatchNorm running
              statistics, quantised to uint8 as exported PNGs; mean over pixels). About
              0.04 means every latent gives nearly the same image (a collapse); real
              CIFAR-10 images give about 0.5.
  d_acc_real, d_acc_fake   the discriminator's accuracy in its own updates (mean over the
              epoch's steps), and the epoch's mean d_loss and g_loss.

and, after the epochs in --fid_epochs (default: the last), FID of --fid_samples samples
per generator against the statistics of the first --fid_ref training images (the
project's Flax FID Inception, --weights; fid_helper works offline). Lines go to
OUT/parity.jsonl as they are measured (re-running skips the (side, init, seed) runs
already there), and the script ends with a table of mean ± std over seeds per epoch.
"""

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from cgan_jax import configlib
from cgan_jax.quality import metrics as metrics_lib
from cgan_jax.quality import weights as weights_lib
from cgan_jax.run import builder, generate, input_pipeline
from cgan_jax.run import evaluation as evaluator_lib

FLAGS = flags.FLAGS


def parity_config(variant: str, *, image_size: int, width: int, batch_size: int, seed: int):
  config = configlib.load_config(f"configs/cifar64.py:{variant}")
  config.data.image_size = image_size
  config.model.g_width = width
  config.model.d_width = width
  config.train.batch_size = batch_size
  config.seed = seed
  return config


def diversity(images_uint8: np.ndarray) -> float:
  """Pixel std across samples of uint8 [n, h, w, c] images mapped to [-1, 1], mean over
  pixels: ~0.04 for a collapsed generator, ~0.5 for real CIFAR-10."""
  x = images_uint8.astype(np.float64) / 127.5 - 1.0
  return float(x.std(axis=0).mean())


class FIDScorer:
  """FID of uint8 samples against the first `num_ref` real images (the project's Inception)."""

  def __init__(self, images: np.ndarray, num_ref: int, weights: str, image_size: int):
    self.extractor = evaluator_lib.InceptionExtractor(weights_lib.load_weights(weights), 100)
    self.reference = evaluator_lib.reference_statistics(
      images[:num_ref],
      image_size,
      self.extractor,
      f"CIFAR-10 train[:{num_ref}] at {image_size}px",
    )

  def __call__(self, samples: np.ndarray) -> float:
    feats, _ = self.extractor.extract(samples, desc="FID samples")
    mu, sigma = metrics_lib.statistics(feats)
    return metrics_lib.frechet_distance(
      mu, sigma, self.reference.mu, self.reference.sigma, sigma2_root=self.reference.sigma_root
    )


class JaxSide:
  """The project's training, step by step, as `train_and_evaluate` runs it."""

  name = "jax"

  def __init__(self, config, spe: int):
    init_key, self.eval_key = jax.random.split(jax.random.PRNGKey(config.seed))
    program = builder.build(config)
    self.state = program.init_state(config, init_key)
    self.graph = program.hparams(config, steps_per_epoch=spe)
    self.step_fn = program.step_on_raw
    self.generate_fn = program.generate
    self.z_dim = config.model.z_dim

  def step(self, raw: np.ndarray) -> dict:
    self.state, metrics = self.step_fn(self.state, raw, self.graph)
    return metrics

  def samples(self, num: int, salt: int) -> np.ndarray:
    """uint8 [k, num, h, w, 3], BatchNorm running statistics."""
    return generate.generate_all(
      self.generate_fn,
      self.state.g_params,
      self.state.g_batch_stats,
      jax.random.fold_in(self.eval_key, salt),
      num,
      self.z_dim,
      200,
    )


class TorchSide:
  """The PyTorch twin (`step_vs_pytorch.make_torch_step`), eager, on the CPU."""

  name = "torch"

  def __init__(self, config, spe: int):
    del spe  # 'through' gates only: the twin has no gate schedule
    import torch

    torch.manual_seed(config.seed)
    self.torch = torch
    self._step, self.gens, _ = _twin().make_torch_step(config, "cpu", False)
    self.z_dim = config.model.z_dim
    self.image_size = config.data.image_size

  def step(self, raw: np.ndarray) -> dict:
    real = np.array(input_pipeline.preprocess(raw, self.image_size))
    return self._step(self.torch.from_numpy(real).permute(0, 3, 1, 2).contiguous())

  def samples(self, num: int, salt: int) -> np.ndarray:
    torch = self.torch
    gen = torch.Generator().manual_seed(10_000 + salt)
    z = torch.randn(num, self.z_dim, generator=gen)
    out = []
    with torch.no_grad():
      for g in self.gens:
        g.eval()
        chunks = [g(z[i : i + 200])[0] for i in range(0, num, 200)]
        image = torch.cat(chunks).permute(0, 2, 3, 1).numpy()
        out.append(np.asarray(generate.to_uint8(image)))
    return np.stack(out)


def _twin():
  """benchmarks/step_vs_pytorch.py, imported by path (this script runs from anywhere)."""
  import importlib.util

  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_vs_pytorch.py")
  spec = importlib.util.spec_from_file_location("step_vs_pytorch", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


SIDES = {"jax": JaxSide, "torch": TorchSide}


def run_one(side_cls, config, images, epochs: int, fid_epochs, fid, out_path: str, tag: dict):
  """Trains one side for `epochs` epochs; appends one JSON line per epoch to out_path."""
  b = config.train.batch_size
  spe = input_pipeline.steps_per_epoch(len(images), b)
  side = side_cls(config, spe)
  t0 = time.perf_counter()
  for epoch in range(epochs):
    sums: dict[str, float] = {}
    batches = input_pipeline.EpochBatches(images, b, config.seed, epoch, 0, 0, 1)
    for raw in batches:
      m = side.step(raw)
      for name in ("d_acc_real", "d_acc_fake", "d_loss", "g_loss"):
        sums[name] = sums.get(name, 0.0) + float(np.mean(np.asarray(m[name])))
    grid = side.samples(FLAGS.grid, salt=0)
    record = {
      **tag,
      "epoch": epoch + 1,
      "step": (epoch + 1) * spe,
      "diversity": [diversity(g) for g in grid],
      **{name: total / spe for name, total in sums.items()},
      "train_s": time.perf_counter() - t0,
    }
    if fid is not None and (epoch + 1) in fid_epochs:
      record["fid"] = [fid(g) for g in side.samples(FLAGS.fid_samples, salt=1)]
      record["fid_samples"] = FLAGS.fid_samples
    print(json.dumps(record), flush=True)
    with open(out_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if epoch + 1 == epochs:
      grids = os.path.join(os.path.dirname(out_path), "grids")
      os.makedirs(grids, exist_ok=True)
      name = f"{tag['variant']}_{tag['side']}_{tag['init']}_seed{tag['seed']}"
      for i, g in enumerate(grid):
        generate.save_png(generate.make_grid(g), os.path.join(grids, f"{name}_g{i}.png"))


def summarise(records: list[dict]) -> str:
  """Markdown: mean ± std over seeds, per (side, init) and epoch."""
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    groups.setdefault((r["side"], r["init"], r["epoch"]), []).append(r)

  def ms(values):
    v = np.asarray(values, np.float64)
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"

  lines = [
    "| side | init | epoch | seeds | diversity (min over G) | d_acc_real | d_acc_fake "
    "| FID (best G) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for (side, init, epoch), rs in sorted(groups.items()):
    fids = [min(r["fid"]) for r in rs if "fid" in r]
    lines.append(
      f"| {side} | {init} | {epoch} | {','.join(str(r['seed']) for r in rs)} "
      f"| {ms([min(r['diversity']) for r in rs])} | {ms([r['d_acc_real'] for r in rs])} "
      f"| {ms([r['d_acc_fake'] for r in rs])} | {ms(fids) if fids else '-'} |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  os.makedirs(FLAGS.out, exist_ok=True)
  out_path = os.path.join(FLAGS.out, "parity.jsonl")
  done = set()
  if os.path.isfile(out_path):
    with open(out_path) as f:
      for line in f:
        r = json.loads(line)
        if r["epoch"] == r["epochs"]:
          done.add((r["variant"], r["side"], r["init"], r["seed"]))
  base = parity_config(
    FLAGS.variant,
    image_size=FLAGS.image_size,
    width=FLAGS.width,
    batch_size=FLAGS.batch_size,
    seed=0,
  )
  base.data.source = FLAGS.source
  base.data.num_train = FLAGS.num_train
  images = input_pipeline.load_images(base)
  fid = None
  if FLAGS.fid_samples:
    fid = FIDScorer(images, FLAGS.fid_ref, FLAGS.weights, FLAGS.image_size)
  fid_epochs = {int(e) for e in FLAGS.fid_epochs} or {FLAGS.epochs}
  runs = [("jax", i) for i in FLAGS.inits] + [("torch", i) for i in FLAGS.torch_inits]
  for side, init in runs:
    for seed in (int(s) for s in FLAGS.seeds):
      if (FLAGS.variant, side, init, seed) in done:
        continue
      config = parity_config(
        FLAGS.variant,
        image_size=FLAGS.image_size,
        width=FLAGS.width,
        batch_size=FLAGS.batch_size,
        seed=seed,
      )
      config.model.init = init
      configlib.validate_config(config)
      tag = {
        "variant": FLAGS.variant,
        "side": side,
        "init": init,
        "seed": seed,
        "epochs": FLAGS.epochs,
        "num_train": len(images),
      }
      run_one(SIDES[side], config, images, FLAGS.epochs, fid_epochs, fid, out_path, tag)
  with open(out_path) as f:
    records = [json.loads(line) for line in f]
  records = [r for r in records if r["variant"] == FLAGS.variant]
  table = summarise(records)
  print(table)
  with open(os.path.join(FLAGS.out, f"parity_{FLAGS.variant}.md"), "w") as f:
    f.write(table + "\n")


def define_flags() -> None:
  flags.DEFINE_string("variant", "dcgan_sn", "configs/cifar64.py variant (the method).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, for both sides.")
  flags.DEFINE_integer("epochs", 5, "Epochs over --num_train images.")
  flags.DEFINE_integer("num_train", 5000, "Real training images (0: all 50,000).")
  flags.DEFINE_integer("image_size", 32, "Image side.")
  flags.DEFINE_integer("width", 32, "g_width = d_width.")
  flags.DEFINE_integer("batch_size", 64, "Batch size.")
  flags.DEFINE_list("inits", ["dcgan"], "config.model.init values for the JAX side.")
  flags.DEFINE_list("torch_inits", ["dcgan"], "Init schemes for the twin (dcgan, torch).")
  flags.DEFINE_string("source", "cifar_archive", "config.data.source (synthetic for tests).")
  flags.DEFINE_integer("grid", 64, "Latents for the diversity measure.")
  flags.DEFINE_integer("fid_samples", 1000, "FID samples per generator (0: no FID).")
  flags.DEFINE_integer("fid_ref", 2000, "Real images of the FID reference (the first N).")
  flags.DEFINE_list("fid_epochs", [], "Epochs after which FID is measured (default: the last).")
  flags.DEFINE_string("weights", "fid_helper", "Inception weights (config.eval.inception_weights).")
  flags.DEFINE_string("out", "/tmp/cgan_parity", "Output folder (parity.jsonl, tables, grids).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
