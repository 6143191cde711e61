"""The knowledge transfer graph (paper, section 3.2 and Figure 4).

Nodes are the discriminator D and the generators G_1..G_k. Every generator G_i has an
adversarial edge L_D,i from D, and every ordered pair (t, s), t != s, has a transfer edge
L_t,s that moves knowledge from teacher G_t to student G_s. Every edge has a gate.

Text form (configs and CLI):

  config.graph.gates_d         comma list of k gate names, e.g. "through,positive_linear"
  config.graph.gates_transfer  k x k, rows = teacher t, columns = student s, ';' between
                               rows, e.g. "-,through;cutoff,-". The diagonal is ignored
                               and may be '-' or any gate name.

An empty string means "through" on every edge. Indices in text and arrays are 0-based
(G_1 of the paper is generator 0).
"""

import dataclasses
from collections.abc import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cgan_jax.core import gates as gates_lib
from cgan_jax.core import losses
from cgan_jax.errors import ConfigError

# represent(images [k, b, h, w, 3], features) -> one L2-normalised [k, b, d] array per
# compared layer; `features[m - 1]` is generator layer m, [k, b, h, w, c].
Represent = Callable[[jax.Array, Sequence[jax.Array]], list[jax.Array]]


@dataclasses.dataclass(frozen=True)
class TransferMethod:
  """A knowledge-transfer method: what two generators' outputs are compared by.

  Attributes:
    represent: the representations compared by L_t,s (see `Represent`); None for no
      transfer edges at all.
    layers: the 1-based generator layers `represent` reads (checked against the image
      size by the config validation); empty when it reads only the images.
  """

  represent: Represent | None
  layers: tuple[int, ...] = ()


def feature_transfer(layers: tuple[int, ...]) -> TransferMethod:
  """Eq. (3)-(4): attention maps of the generator layers `layers` (1-based)."""
  return TransferMethod(
    lambda images, feats: [losses.attention_map(feats[m - 1]) for m in layers], layers
  )


# The transfer methods by name (`config.graph.transfer`). Layer numbers are 1-based over
# the generator's layers (1 = the projection of z, the last = the tanh image), as the
# paper counts the layers of DCGAN; see `models.Generator`. A new method is one function
# and one entry (`register_transfer`); README "Extending".
TRANSFERS: dict[str, TransferMethod] = {
  "image": TransferMethod(lambda images, feats: [losses.image_representation(images)]),
  "feature_input_side": feature_transfer((2, 3)),
  "feature_output_side": feature_transfer((3, 4)),
  "none": TransferMethod(None),
}


def register_transfer(name: str, method: TransferMethod) -> None:
  """Adds a transfer method under `name`; `config.graph.transfer=name` then selects it."""
  if name in TRANSFERS:
    raise ValueError(f"transfer method {name!r} is already registered")
  TRANSFERS[name] = method


def transfer_methods() -> tuple[str, ...]:
  """The registered transfer method names (the allowed `config.graph.transfer` values)."""
  return tuple(TRANSFERS)


@flax.struct.dataclass
class GraphArrays:
  """The traced part of the graph: passed to the train step as an argument.

  Attributes:
    gates_d: int32 [k], gate id of the adversarial edge L_D,i.
    gates_transfer: int32 [k, k], gate id of edge L_t,s at [t, s]; diagonal = cutoff.
    alpha: float32 [], the transfer loss scale (paper: 1000).
  """

  gates_d: jax.Array
  gates_transfer: jax.Array
  alpha: jax.Array


def _gate_id(name: str, field: str) -> int:
  name = name.strip()
  if name not in gates_lib.GATE_NAMES:
    allowed = ", ".join(gates_lib.GATE_NAMES)
    raise ConfigError(f"{field}: unknown gate {name!r}; allowed gates: {allowed}")
  return gates_lib.GATE_NAMES.index(name)


def parse_gates_d(text: str, k: int) -> np.ndarray:
  """Parses `config.graph.gates_d` into int32 [k] gate ids."""
  field = "config.graph.gates_d"
  if not text.strip():
    return np.full((k,), gates_lib.THROUGH, np.int32)
  names = text.split(",")
  if len(names) != k:
    raise ConfigError(
      f"{field}={text!r} has {len(names)} gates but model.k={k}; give k comma-separated "
      f"gates from {', '.join(gates_lib.GATE_NAMES)}"
    )
  return np.array([_gate_id(n, field) for n in names], np.int32)


def parse_gates_transfer(text: str, k: int) -> np.ndarray:
  """Parses `config.graph.gates_transfer` into int32 [k, k] (teacher, student) gate ids."""
  field = "config.graph.gates_transfer"
  out = np.full((k, k), gates_lib.THROUGH, np.int32)
  if text.strip():
    rows = text.split(";")
    if len(rows) != k or any(len(r.split(",")) != k for r in rows):
      shape = "x".join(str(len(r.split(","))) for r in rows)
      raise ConfigError(
        f"{field}={text!r} must be {k}x{k} for model.k={k} (rows = teacher, ';' between "
        f"rows, ',' between columns), got rows of sizes {shape}"
      )
    for t, row in enumerate(rows):
      for s, name in enumerate(row.split(",")):
        if t == s and name.strip() in ("-", ""):
          continue
        out[t, s] = _gate_id(name, f"{field}[{t},{s}]")
  np.fill_diagonal(out, gates_lib.CUTOFF)
  return out


def format_gates_d(ids) -> str:
  """Inverse of `parse_gates_d`."""
  return ",".join(gates_lib.GATE_NAMES[int(i)] for i in np.asarray(ids))


def format_gates_transfer(ids) -> str:
  """Inverse of `parse_gates_transfer` (diagonal written as '-')."""
  ids = np.asarray(ids)
  rows = []
  for t in range(ids.shape[0]):
    rows.append(
      ",".join("-" if t == s else gates_lib.GATE_NAMES[int(ids[t, s])] for s in range(ids.shape[1]))
    )
  return ";".join(rows)


def graph_arrays_from_config(config) -> GraphArrays:
  """Builds the traced graph arrays from a validated config."""
  k = config.model.k
  return GraphArrays(
    gates_d=jnp.asarray(parse_gates_d(config.graph.gates_d, k)),
    gates_transfer=jnp.asarray(parse_gates_transfer(config.graph.gates_transfer, k)),
    alpha=jnp.asarray(config.graph.alpha, jnp.float32),
  )


def transfer_layers(transfer: str) -> tuple[int, ...]:
  """1-based generator layers compared by a transfer method (empty: images or none)."""
  return TRANSFERS[transfer].layers
