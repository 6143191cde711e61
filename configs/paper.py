"""The paper's experiments at the paper's scale (`python -m cgan_jax.reproduce
--protocol=paper` and `--protocol=paper_table3`).

Variants, after a colon (one method, plus modifiers):

  Table 1 (section 4.2)
    dcgan      DCGAN, k=1, BatchNorm discriminator
    dcgan_sn   DCGAN with spectral norm, k=1
    madgan     MAD-GAN with spectral norm, k=2
    proposed   (default) k=2, generated-image transfer, through gates
  Table 3 (section 4.4)
    madgan3    MAD-GAN with spectral norm, k=3
    proposed3  k=3, feature maps near the output (layers 3 and 4), through gates unless
               the protocol's --gates_d/--gates_transfer give a searched graph
  tiny         (modifier) the same pipeline on synthetic 32 px data in seconds (tests)

The setting, from section 4.1: 64x64 CIFAR-10, all 50,000 training images, batch 256,
z of 100, DCGAN widths 64, alpha = 1,000, 200 epochs. Evaluation (the paper gives only
"the highest point of IS" for Table 1 and "the end of learning" for Table 3): IS and FID
of 10,000 samples per generator every 10 epochs, and of 50,000 samples at the end, against
the statistics of all 50,000 training images. Checkpoints every 5 epochs, so that a run
resumes in pieces. Our choices where the paper is silent (Adam 2e-4 / 0.5 / 0.999, the
init, ...) are those of `configs/cifar64.py`.
"""

import ml_collections

from cgan_jax import configlib
from cgan_jax.errors import choice_error

TABLE1 = ("dcgan", "dcgan_sn", "madgan", "proposed")
TABLE3 = ("dcgan", "dcgan_sn", "madgan3", "proposed3")
METHODS = tuple(dict.fromkeys(TABLE1 + TABLE3))
VARIANTS = (*METHODS, "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
  for v in variants:
    if v not in VARIANTS:
      raise choice_error("config variant", v, VARIANTS)
  method = ([v for v in variants if v in METHODS] or ["proposed"])[-1]
  base = "madgan" if method == "madgan3" else method
  c = configlib.load_sibling(__file__, f"cifar64.py:{base}")
  if method == "madgan3":
    c.model.k = 3
  c.num_epochs = 200
  c.eval.every_epochs = 10
  c.eval.num_samples = 10_000
  c.eval.final_num_samples = 50_000
  c.eval.num_reference = 0  # all 50,000 training images
  c.checkpoint.every_epochs = 5
  c.checkpoint.keep = 2
  c.train.log_every_steps = 195  # about once per epoch
  if "tiny" in variants:
    c.num_epochs = 2
    c.data.source = "synthetic"
    c.data.image_size = 32  # feature_output_side needs 32 px
    c.data.num_train = 64
    c.model.g_width = 4
    c.model.d_width = 4
    c.train.batch_size = 16
    c.train.log_every_steps = 2
    c.eval.every_epochs = 1
    c.eval.num_samples = 20
    c.eval.final_num_samples = 20
    c.eval.num_reference = 20
    c.eval.batch_size = 20
    c.eval.num_grid = 4
    c.eval.inception_weights = "fid_helper"
    c.checkpoint.every_epochs = 1
  return c
