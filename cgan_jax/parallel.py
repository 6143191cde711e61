"""Device mesh and shardings for data-parallel training.

One code path serves 1..N devices: the state is replicated, every global batch is split
along its first axis over the mesh axis 'data', and `jax.jit` partitions the step
(GSPMD). Batch statistics (BatchNorm, the discriminator's losses) are therefore computed
over the global batch, exactly as on one device.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cgan_jax.errors import ConfigError

DATA = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (or the given) devices with axis 'data'."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (DATA,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Raises ConfigError unless the global batch splits evenly over the devices."""
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(
      f"config.train.batch_size={batch_size} is not divisible by the {n} devices; "
      f"use a multiple of {n}"
    )
