"""Training images: tfds, a local CIFAR-10 archive, or synthetic -> device batches.

Sources (`config.data.source`):
  tfds           CIFAR-10 'train' through tensorflow-datasets (downloads on a networked
                 machine into `config.data.tfds_dir`).
  cifar_archive  the standard `cifar-10-python.tar.gz`, or its extracted
                 `cifar-10-batches-py/` folder, at `config.data.path`; NumPy only.
  synthetic      deterministic random images (tests).

All sources give uint8 [N, 32, 32, 3] on the host. Batches travel as uint8 and are resized
to `config.data.image_size` (bilinear, `jax.image.resize`) and scaled to [-1, 1] on the
device, inside the jitted step (`preprocess`), so the host only gathers and copies bytes.

Each epoch's order is a permutation drawn from (seed, epoch) alone, batches drop the
remainder, and each process takes its slice of every global batch. Batch t of epoch e is
therefore a function of (seed, e, t): a resumed run sees exactly the batches it would have.
"""

import os
import pickle
import queue
import tarfile
import threading
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cgan_jax.errors import ConfigError

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def _decode_cifar_batch(raw: bytes, name: str, path: str) -> np.ndarray:
  try:
    d = pickle.loads(raw, encoding="bytes")
    data = np.asarray(d[b"data"], np.uint8)
  except Exception as e:  # noqa: BLE001 - any decoding failure means a corrupt file
    raise ConfigError(
      f"config.data.path={path!r}: {name} is not a valid CIFAR-10 python batch ({e})"
    ) from None
  if data.ndim != 2 or data.shape[1] != 3072:
    raise ConfigError(f"config.data.path={path!r}: {name} has data of shape {data.shape}")
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def load_cifar_archive(path: str) -> np.ndarray:
  """Reads the 50,000 CIFAR-10 training images with NumPy only.

  Args:
    path: `cifar-10-python.tar.gz`, the extracted `cifar-10-batches-py/` folder, or the
      folder that contains it.

  Returns:
    uint8 [50000, 32, 32, 3].

  Raises:
    ConfigError: the path is missing, or the archive is corrupt or incomplete.
  """
  hint = "download cifar-10-python.tar.gz from the CIFAR-10 page, or use data.source=tfds"
  if not path or not os.path.exists(path):
    where = f" (resolved: {os.path.abspath(path)})" if path and not os.path.isabs(path) else ""
    raise ConfigError(
      f"config.data.path={path!r}{where}: no CIFAR-10 archive or folder there; {hint}"
    )
  batches = {}
  if os.path.isdir(path):
    folder = path
    if os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
      folder = os.path.join(path, "cifar-10-batches-py")
    for name in CIFAR_TRAIN_BATCHES:
      f = os.path.join(folder, name)
      if not os.path.isfile(f):
        raise ConfigError(f"config.data.path={path!r}: {name} is missing in {folder}")
      with open(f, "rb") as fh:
        batches[name] = fh.read()
  else:
    try:
      with tarfile.open(path, "r:*") as tar:
        for member in tar:
          base = os.path.basename(member.name)
          if base in CIFAR_TRAIN_BATCHES and member.isfile():
            batches[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
      raise ConfigError(
        f"config.data.path={path!r} is not a readable cifar-10-python.tar.gz ({e})"
      ) from None
    missing = [n for n in CIFAR_TRAIN_BATCHES if n not in batches]
    if missing:
      raise ConfigError(
        f"config.data.path={path!r} is not a complete cifar-10-python archive "
        f"(missing {', '.join(missing)})"
      )
  return np.concatenate([_decode_cifar_batch(batches[n], n, path) for n in CIFAR_TRAIN_BATCHES])


def load_tfds(data_dir: str = "") -> np.ndarray:
  """CIFAR-10 'train' via tensorflow-datasets, downloading it if needed -> uint8 [N,32,32,3]."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ConfigError(
      f"config.data.source='tfds' needs tensorflow-datasets ({e}); install it or use "
      "--config.data.source=cifar_archive --config.data.path=PATH/cifar-10-python.tar.gz"
    ) from None
  offline_hint = (
    "offline, use --config.data.source=cifar_archive --config.data.path=PATH/cifar-10-python.tar.gz"
  )
  try:
    prepared = tfds.builder("cifar10", data_dir=data_dir or None).is_prepared()
  except Exception:  # noqa: BLE001 - let tfds.load below report it
    prepared = True
  if not prepared:
    # tensorflow-datasets retries an unreachable download for minutes: fail at once.
    unreachable = cannot_reach(*TFDS_CIFAR10_SERVER)
    if unreachable:
      raise ConfigError(
        f"config.data.source='tfds' must download CIFAR-10, but its server "
        f"{TFDS_CIFAR10_SERVER[0]} cannot be reached ({unreachable}); {offline_hint}"
      )
  try:
    ds = tfds.load("cifar10", split="train", batch_size=-1, data_dir=data_dir or None)
    return np.asarray(tfds.as_numpy(ds)["image"], np.uint8)
  except Exception as e:  # noqa: BLE001 - offline machines fail in many ways
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(
      f"config.data.source='tfds' could not load CIFAR-10 ({msg}); {offline_hint}"
    ) from None


# Where tensorflow-datasets downloads CIFAR-10 from (its cifar10 builder's URL).
TFDS_CIFAR10_SERVER = ("www.cs.toronto.edu", 443)


def cannot_reach(host: str, port: int, timeout: float = 5.0) -> str | None:
  """None if a TCP connection to host:port opens within `timeout` s, else the reason."""
  import socket

  try:
    with socket.create_connection((host, port), timeout=timeout):
      return None
  except OSError as e:
    return f"{type(e).__name__}: {e}"


def synthetic_images(n: int, seed: int = 0) -> np.ndarray:
  """Deterministic random uint8 [n, 32, 32, 3] images (smooth colour blobs plus noise)."""
  rng = np.random.default_rng([seed, 20210101])
  yy, xx = np.mgrid[0:32, 0:32] / 31.0
  centre = rng.uniform(0, 1, size=(n, 2, 1, 1))
  colour = rng.uniform(0, 255, size=(n, 1, 1, 3))
  blob = np.exp(-((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2) * 8.0)[..., None]
  img = blob * colour + rng.normal(0, 8, size=(n, 32, 32, 3)) + 20
  return np.clip(img, 0, 255).astype(np.uint8)


def load_images(config) -> np.ndarray:
  """The training images of `config.data.source` as uint8 [N, 32, 32, 3].

  `config.data.num_train` > 0 keeps the first N images (N >= one global batch).
  """
  d = config.data
  if d.source == "cifar_archive":
    images = load_cifar_archive(d.path)
  elif d.source == "tfds":
    images = load_tfds(d.tfds_dir)
  else:
    images = synthetic_images(d.num_train or 1024, config.seed)
  if d.num_train:
    images = images[: d.num_train]
  if len(images) < config.train.batch_size:
    raise ConfigError(
      f"config.data.num_train={len(images)} is smaller than config.train.batch_size="
      f"{config.train.batch_size}; use more images or a smaller batch"
    )
  return images


def preprocess(images: jax.Array, image_size: int) -> jax.Array:
  """uint8 [b, h, w, 3] -> float32 [b, image_size, image_size, 3] in [-1, 1] (on device)."""
  x = images.astype(jnp.float32) / 127.5 - 1.0
  if x.shape[1] != image_size:
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "bilinear")
  return jnp.clip(x, -1.0, 1.0)


def epoch_permutation(num_images: int, seed: int, epoch: int) -> np.ndarray:
  """The order of epoch `epoch`: a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_images)


class EpochBatches:
  """Host-side batches of one epoch, optionally starting mid-epoch (for resume).

  Args:
    images: uint8 [N, h, w, 3].
    global_batch: batch size over all processes.
    seed: the data seed.
    epoch: epoch index.
    start: first batch index within the epoch.
    process_index, process_count: this host's slice of every global batch.
  """

  def __init__(self, images, global_batch, seed, epoch, start=0, process_index=0, process_count=1):
    self.images = images
    self.order = epoch_permutation(len(images), seed, epoch)
    self.global_batch = global_batch
    self.local = global_batch // process_count
    self.offset = process_index * self.local
    self.start = start

  def __len__(self):
    return len(self.images) // self.global_batch - self.start

  def __iter__(self) -> Iterator[np.ndarray]:
    for t in range(self.start, self.start + len(self)):
      idx = self.order[t * self.global_batch + self.offset :][: self.local]
      yield self.images[idx]


def steps_per_epoch(num_images: int, global_batch: int) -> int:
  return num_images // global_batch


def prefetch_to_device(iterator, size: int, sharding) -> Iterator[jax.Array]:
  """Puts host batches on the devices in a background thread, `size` batches ahead.

  Args:
    iterator: yields this process's uint8 [local_b, h, w, 3] slices of global batches.
    size: how many batches to keep in flight.
    sharding: the global batch's sharding (batch axis over the 'data' mesh axis).

  Yields:
    Global jax.Arrays [global_b, h, w, 3].
  """
  q: queue.Queue = queue.Queue(maxsize=max(size, 1))
  sentinel = object()
  error: list[BaseException] = []

  def producer():
    try:
      for batch in iterator:
        q.put(jax.make_array_from_process_local_data(sharding, batch))
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
      error.append(e)
    finally:
      q.put(sentinel)

  thread = threading.Thread(target=producer, daemon=True)
  thread.start()
  while True:
    item = q.get()
    if item is sentinel:
      break
    yield item
  thread.join()
  if error:
    raise error[0]
