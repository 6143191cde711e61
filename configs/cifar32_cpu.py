"""The paper's Table 1 made small enough for a 2-core CPU (`python -m cgan_jax.reproduce`).

Variants, after a colon: one method, and optionally `tiny`:

  dcgan      DCGAN, k=1, BatchNorm discriminator
  dcgan_sn   DCGAN with spectral norm, k=1
  madgan     MAD-GAN with spectral norm, k=2, no transfer
  proposed   (default) k=2, generated-image transfer (eq. 5), through gates
  tiny       (modifier, for tests) synthetic 16 px data, 1 epoch, 20 FID samples

What is scaled down from the paper (section 4.1, configs/cifar64.py) and why:

  image size   32 px, CIFAR-10's own (paper: resized to 64 px): 4x fewer pixels per step
  widths       g_width = d_width = 32 (paper: DCGAN's 64): ~4x fewer FLOPs per layer
  batch        64 (paper: 256)
  epochs       5 over all 50,000 training images (paper: 200), 3,905 steps
  evaluation   FID only (the IS logits are not installable offline), fid_helper weights,
               2,000 samples per generator against the first 10,000 training images,
               after epochs 2, 4 and 5 (the end)

Kept as in the paper: the losses, alpha = 1000, z of 100 dimensions, the update order.
Kept as in `configs/cifar64.py` (our choices where the paper is silent): Adam (2e-4, 0.5,
0.999), DCGAN's convention; DCGAN init (N(0, 0.02)); real CIFAR-10 from the archive at
`config.data.path`.

On the development machine (2-core AMD EPYC VM) a step takes about 0.11 s at k = 1 and
0.21 s at k = 2, and our Inception runs at 13-15 images/s, so the 8 runs of the protocol
(4 methods x 2 seeds) take an estimated 1.4 h of training and 1.6 h of evaluation
(3 evaluations x 12 generators x 2,000 samples, plus the 10,000 reference images once).
A whole run is slower than those timed steps: the proposed method's seed 1, idle, trained
at 0.27-0.29 s per step (with input and logging) and scored at 11.7-11.9 images/s.
Evaluation is the larger part, so it runs every 2 epochs rather than every epoch.
"""

import ml_collections

from cgan_jax import configlib
from cgan_jax.errors import choice_error

METHODS = ("dcgan", "dcgan_sn", "madgan", "proposed")
VARIANTS = (*METHODS, "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The CPU protocol config of one method (`arg`: 'method[,tiny]')."""
  variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
  for v in variants:
    if v not in VARIANTS:
      raise choice_error("config variant", v, VARIANTS)
  methods = [v for v in variants if v in METHODS] or ["proposed"]
  # 32 px, widths 32, batch 64 are the demo's (configs/cifar64.py:demo); the rest is ours.
  c = configlib.load_sibling(__file__, f"cifar64.py:{methods[-1]},demo")
  c.num_epochs = 5
  c.data.source = "cifar_archive"
  c.eval.inception_weights = "fid_helper"
  c.eval.every_epochs = 2
  c.eval.num_samples = 2000
  c.eval.final_num_samples = 2000
  c.eval.num_reference = 10_000
  c.checkpoint.every_epochs = 1
  c.checkpoint.keep = 2
  if "tiny" in variants:
    c.num_epochs = 1
    c.data.source = "synthetic"
    c.data.image_size = 16
    c.data.num_train = 64
    c.model.g_width = 4
    c.model.d_width = 4
    c.train.batch_size = 16
    c.train.log_every_steps = 2
    c.eval.num_samples = 20
    c.eval.final_num_samples = 20
    c.eval.num_reference = 20
    c.eval.batch_size = 20  # the tests' Inception batch: compiled once per test run
    c.eval.num_grid = 4
  return c
