"""RAFT weights: torchvision's state dicts (raft_large / raft_small files) -> our `Raft`.

One explicit table (`raft_table`): each row is our parameter path, torchvision's
tensor name and the layout change (Conv2d weights [out, in, kh, kw] become
channels-last kernels [kh, kw, in, out]; BatchNorm's weight / bias / running
statistics become nnx.BatchNorm's scale / bias / mean / var). It is built from
the config, so every tensor of the file is accounted for: a missing or unknown
tensor, or one of the wrong shape, is an error that names it.

Files: torchvision's downloads are `torch.save` zip archives (.pth). They are
read here without torch (`read_torch_zip`), since torch is not a dependency of
this project; a .safetensors file with the same names is read too.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

from flax import nnx
import jax.numpy as jnp
import numpy as np

from videojam_jax.model import diffusers_format as fmt
from videojam_jax.model.raft import network

E = fmt.Entry
CONV = fmt.ConvKernel()
# BatchNorm's step counter: a training statistic the network never reads.
IGNORED_SUFFIXES = (".num_batches_tracked",)
# torch storage classes in a state dict's pickle -> numpy dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class RaftWeightsError(ValueError):
  """A weights file that cannot be read as the requested RAFT."""


def _conv_rows(ours: str, theirs: str) -> list[fmt.Entry]:
  return [E(f"{ours}/kernel", f"{theirs}.weight", CONV), E(f"{ours}/bias", f"{theirs}.bias")]


def _conv_norm_rows(ours: str, theirs: str, norm: str) -> list[fmt.Entry]:
  """torchvision's Conv2dNormActivation: Sequential(conv, norm, relu) -> .0 and .1."""
  rows = _conv_rows(f"{ours}/conv", f"{theirs}.0")
  if norm == "batch":
    rows += [E(f"{ours}/norm/scale", f"{theirs}.1.weight"),
             E(f"{ours}/norm/bias", f"{theirs}.1.bias"),
             E(f"{ours}/norm/mean", f"{theirs}.1.running_mean"),
             E(f"{ours}/norm/var", f"{theirs}.1.running_var")]
  return rows


def _encoder_rows(prefix: str, block: str, norm: str) -> list[fmt.Entry]:
  rows = _conv_norm_rows(f"{prefix}/convnormrelu", f"{prefix}.convnormrelu", norm)
  convs = 2 if block == "residual" else 3
  for layer in (1, 2, 3):
    for b in (0, 1):
      ours, theirs = f"{prefix}/layer{layer}/{b}", f"{prefix}.layer{layer}.{b}"
      for c in range(1, convs + 1):
        rows += _conv_norm_rows(f"{ours}/convnormrelu{c}", f"{theirs}.convnormrelu{c}", norm)
      if b == 0 and network.FeatureEncoder.STRIDES[layer] != 1:
        rows += _conv_norm_rows(f"{ours}/downsample", f"{theirs}.downsample", norm)
  return rows + _conv_rows(f"{prefix}/conv", f"{prefix}.conv")


def raft_table(config: network.RaftConfig) -> list[fmt.Entry]:
  """Our `Raft(config)` parameters <-> torchvision's RAFT state-dict names."""
  rows = (_encoder_rows("feature_encoder", config.feature_block, config.feature_norm)
          + _encoder_rows("context_encoder", config.context_block, config.context_norm))
  motion = "update_block/motion_encoder"
  convs = ["convcorr1"] + (["convcorr2"] if len(config.motion_corr_layers) == 2 else [])
  for name in convs + ["convflow1", "convflow2", "conv"]:
    rows += _conv_norm_rows(f"{motion}/{name}", f"{motion.replace('/', '.')}.{name}", "none")
  for gru in ["convgru1"] + (["convgru2"] if len(config.gru_kernels) == 2 else []):
    for gate in ("convz", "convr", "convq"):
      path = f"update_block/recurrent_block/{gru}/{gate}"
      rows += _conv_rows(path, path.replace("/", "."))
  for conv in ("conv1", "conv2"):
    rows += _conv_rows(f"update_block/flow_head/{conv}", f"update_block.flow_head.{conv}")
  if config.mask_predictor:
    rows += _conv_norm_rows("mask_predictor/convrelu", "mask_predictor.convrelu", "none")
    rows += _conv_rows("mask_predictor/conv", "mask_predictor.conv")
  return rows


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickles a torch.save'd state dict into numpy arrays, admitting only the few
  globals a tensor dict needs (no arbitrary code, unlike a plain pickle.load)."""

  def __init__(self, file: Any, archive: zipfile.ZipFile, root: str):
    super().__init__(file)
    self._archive, self._root = archive, root

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a state dict")

  def persistent_load(self, pid: Any) -> np.ndarray:
    kind, dtype, key, _location, _numel = pid
    if kind != "storage":
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    return np.frombuffer(self._archive.read(f"{self._root}/data/{key}"), dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> np.ndarray:
  item = storage.itemsize
  return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size),
                                         tuple(s * item for s in stride)).copy()


def read_torch_zip(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A `torch.save(state_dict)` zip archive -> {name: numpy array}, without torch."""
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise RaftWeightsError(f"{path}: not a torch.save zip archive (a legacy pre-1.6 torch "
                           "file? re-save it with a recent torch, or as .safetensors)") from e
  with archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise RaftWeightsError(f"{path}: no single data.pkl in the archive ({pickles})")
    root = pickles[0][:-len("/data.pkl")]
    with archive.open(pickles[0]) as f:
      try:
        state = _StateDictUnpickler(f, archive, root).load()
      except pickle.UnpicklingError as e:
        raise RaftWeightsError(f"{path}: not a plain state dict of tensors: {e}") from e
  if not isinstance(state, dict):
    raise RaftWeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
  return dict(state)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """torchvision RAFT weights from a .pth (torch.save zip) or .safetensors file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise RaftWeightsError(f"RAFT weights not found at {path!r}")
  if path.endswith(".safetensors"):
    import safetensors.numpy  # pylint: disable=import-outside-toplevel
    return dict(safetensors.numpy.load_file(path))
  return read_torch_zip(path)


def load(model: network.Raft, state_dict: dict[str, np.ndarray],
         source: str = "RAFT weights") -> network.Raft:
  """Fills `model` (in place; also returned) with torchvision's tensors by `raft_table`.

  The tensors are checked as a diffusers checkpoint is (`diffusers_format.check`): every
  one the table needs, none it does not know, each of the shape the config needs."""
  table = raft_table(model.config)
  reader = fmt.ArrayReader({k: v for k, v in state_dict.items()
                            if not k.endswith(IGNORED_SUFFIXES)}, source)
  params = nnx.state(model).to_pure_dict()
  try:
    fmt.check(reader, table, params)
  except fmt.CheckpointError as e:
    raise RaftWeightsError(f"{e} (raft_large and raft_small files need their own "
                           "config)") from e
  ours = fmt.flatten(params)
  values = {entry.ours: jnp.asarray(entry.layout.to_ours(reader.get(entry.theirs),
                                                         ours[entry.ours].shape))
            for entry in table}
  state = nnx.state(model)
  state.replace_by_pure_dict(fmt.unflatten_like(values, params))
  nnx.update(model, state)
  return model


def from_file(path: str | os.PathLike, config: network.RaftConfig) -> network.Raft:
  """`Raft(config)` with the weights of `path` (torchvision names)."""
  return load(network.init(config), read_state_dict(path), source=os.fspath(path))


def to_state_dict(model: network.Raft) -> dict[str, np.ndarray]:
  """The inverse of `load`: our parameters under torchvision's names and layouts."""
  ours = fmt.flatten(nnx.state(model).to_pure_dict())
  return {entry.theirs: np.ascontiguousarray(entry.layout.to_theirs(np.asarray(ours[entry.ours])))
          for entry in raft_table(model.config)}
