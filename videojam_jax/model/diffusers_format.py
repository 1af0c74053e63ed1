"""Reading and writing diffusers-format model directories (config.json + safetensors).

A model family states how its parameters correspond to the checkpoint's tensors
in one explicit table (`Entry` rows: our parameter path, the diffusers name, the
layout change between them). This module does the rest, for any table:

- `load`: reads the tensors straight into the shardings of the target
  parameters. Each tensor is read once per host (safetensors slices the
  memory-mapped file), changed to our layout, and only this host's shards of it
  are kept and sent to its devices; per-block tensors are stacked into the
  leading 'layers' axis as they arrive. No host ever holds a whole float32
  copy of the model, only one tensor at a time plus its own shards.
- `save`: the reverse, written in shards of at most `max_shard_size` bytes with
  the `...safetensors.index.json` weight map diffusers reads.

Errors name what is wrong: not a diffusers directory, the wrong model class, a
missing shard or tensor, tensors the table does not know, shapes that do not fit
the chosen config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

CONFIG_NAME = "config.json"
# diffusers names its weight files after this stem, transformers (umT5, the text
# encoder of a diffusers pipeline) after "model"; both are read.
DIFFUSERS_STEM, TRANSFORMERS_STEM = "diffusion_pytorch_model", "model"
WEIGHTS_NAME = DIFFUSERS_STEM + ".safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3     # diffusers' default max_shard_size ("5GB")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read as the requested model."""


# --- Layouts: how one diffusers tensor becomes one of our parameters, and back. -------------

class Layout:
  """Identity: the same array in both."""

  def to_ours(self, theirs: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
    return theirs.reshape(our_shape)

  def theirs_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(our_shape)

  def to_theirs(self, ours: np.ndarray) -> np.ndarray:
    return ours.reshape(self.theirs_shape(ours.shape))


IDENTITY = Layout()


@dataclasses.dataclass(frozen=True)
class Reshape(Layout):
  """Same data, other shape: e.g. a (heads * head_dim,) bias as (heads, head_dim), or a
  (C, 1, 1, 1) norm gain as (C,). `theirs` gives the diffusers shape from ours."""
  theirs: Callable[[tuple[int, ...]], tuple[int, ...]]

  def theirs_shape(self, our_shape):
    return tuple(self.theirs(tuple(our_shape)))


@dataclasses.dataclass(frozen=True)
class LinearKernel(Layout):
  """torch.nn.Linear's weight [out, in] as our kernel [*in_dims, *out_dims].

  `in_ndim` of our leading dimensions make up torch's `in` (1 for an ordinary
  kernel; 2 for an attention output projection [heads, head_dim, dim]).
  """
  in_ndim: int = 1

  def to_ours(self, theirs, our_shape):
    return theirs.T.reshape(our_shape)

  def theirs_shape(self, our_shape):
    return (int(np.prod(our_shape[self.in_ndim:])), int(np.prod(our_shape[:self.in_ndim])))

  def to_theirs(self, ours):
    out, inp = self.theirs_shape(ours.shape)
    return ours.reshape(inp, out).T


@dataclasses.dataclass(frozen=True)
class ConvKernel(Layout):
  """torch ConvNd weight [out, in, *kernel] as a channels-last kernel [*kernel, in, out]."""

  def to_ours(self, theirs, our_shape):
    n = theirs.ndim
    return theirs.transpose(*range(2, n), 1, 0).reshape(our_shape)

  def theirs_shape(self, our_shape):
    return (our_shape[-1], our_shape[-2], *our_shape[:-2])

  def to_theirs(self, ours):
    n = ours.ndim
    return ours.transpose(n - 1, n - 2, *range(n - 2))


@dataclasses.dataclass(frozen=True)
class ConvAsLinear(Layout):
  """A Conv3d with kernel = stride = patch, as a Linear on patchified tokens ordered
  (p_t, p_h, p_w, c): torch [out, c, pt, ph, pw] <-> ours [pt*ph*pw*c, out]."""
  patch: tuple[int, ...]

  def to_ours(self, theirs, our_shape):
    return theirs.transpose(2, 3, 4, 1, 0).reshape(our_shape)

  def theirs_shape(self, our_shape):
    channels = our_shape[0] // int(np.prod(self.patch))
    return (our_shape[1], channels, *self.patch)

  def to_theirs(self, ours):
    out, channels, *patch = self.theirs_shape(ours.shape)
    return ours.reshape(*patch, channels, out).transpose(4, 3, 0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: our '/'-joined path, the diffusers tensor name, the layout.

  `stacked`: ours has a leading 'layers' axis; `theirs` holds '{i}' for the block index.
  """
  ours: str
  theirs: str
  layout: Layout = IDENTITY
  stacked: bool = False

  def theirs_names(self, num_layers: int) -> list[str]:
    return [self.theirs.format(i=i) for i in range(num_layers)] if self.stacked else [self.theirs]


def flatten(tree: Any) -> dict[str, Any]:
  """{'a/b/0/kernel': leaf} for a nested params tree (dict keys or nnx.List indices)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
          for path, leaf in leaves}


def unflatten_like(flat: dict[str, Any], tree: Any) -> Any:
  """The tree of `tree`'s structure holding flat[path] at each path."""
  paths = list(flatten(tree))
  return jax.tree.unflatten(jax.tree.structure(tree), [flat[p] for p in paths])


# --- Reading. --------------------------------------------------------------------------------

def read_config(directory: str | os.PathLike, class_names: Sequence[str]) -> dict[str, Any]:
  """config.json of a diffusers model directory, checked to be one of `class_names`
  (its `_class_name`, or for a transformers model its `architectures`)."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise CheckpointError(f"{directory} is not a directory")
  path = directory / CONFIG_NAME
  if not path.exists():
    hint = ""
    if (directory / "model_index.json").exists():
      hint = (" It holds a diffusers pipeline (model_index.json): point at its component "
              "folder, e.g. transformer/ or vae/.")
    raise CheckpointError(f"{directory} is not a diffusers model directory: no {CONFIG_NAME}.{hint}")
  try:
    config = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from e
  name = config.get("_class_name")
  if name is None and isinstance(config.get("architectures"), list):
    name = next((a for a in config["architectures"] if a in class_names), config["architectures"])
  if name not in class_names:
    raise CheckpointError(f"{directory} holds a {name!r} (config.json _class_name), not "
                          f"{' / '.join(class_names)}")
  return config


class TensorReader:
  """The tensors of one diffusers directory, by name, across its safetensors shards."""

  def __init__(self, directory: str | os.PathLike):
    from safetensors import safe_open   # imported here: only checkpoint IO needs it
    self._safe_open = safe_open
    self.directory = pathlib.Path(directory)
    for stem in (DIFFUSERS_STEM, TRANSFORMERS_STEM):
      single = self.directory / f"{stem}.safetensors"
      index = self.directory / f"{stem}.safetensors.index.json"
      if index.exists() or single.exists():
        break
    if index.exists():
      weight_map = json.loads(index.read_text()).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index} has no weight_map")
      missing = sorted({f for f in weight_map.values() if not (self.directory / f).exists()})
      if missing:
        raise CheckpointError(f"{self.directory}: shard files named in {index.name} are missing: "
                              f"{', '.join(missing)}")
      self.file_of = dict(weight_map)
    elif single.exists():
      self.file_of = {}
      with safe_open(single, framework="numpy") as f:
        self.file_of = {name: single.name for name in f.keys()}
    else:
      raise CheckpointError(f"{self.directory} has neither {WEIGHTS_NAME} nor {INDEX_NAME} "
                            f"(nor transformers' {TRANSFORMERS_STEM}.safetensors[.index.json])")
    self._handles: dict[str, Any] = {}
    self._files = contextlib.ExitStack()

  def names(self) -> set[str]:
    return set(self.file_of)

  def close(self) -> None:
    """Unmaps the files (their pages stop counting against this process)."""
    self._files.close()
    self._handles.clear()

  def _open(self, name: str) -> Any:
    if name not in self.file_of:
      raise CheckpointError(f"{self.directory}: the checkpoint has no tensor {name!r}")
    file = self.file_of[name]
    if file not in self._handles:
      try:
        self._handles[file] = self._files.enter_context(
            self._safe_open(self.directory / file, framework="numpy"))
      except Exception as e:   # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{self.directory / file} cannot be read as safetensors: {e}") from e
    return self._handles[file]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._open(name).get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    """The tensor, as float32 (bf16 / fp16 checkpoints are widened one tensor at a time)."""
    try:
      return np.asarray(self._open(name).get_tensor(name), dtype=np.float32)
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"{self.directory}: tensor {name!r} cannot be read: {e}") from e


class ArrayReader:
  """TensorReader's reading interface over tensors already in memory (e.g. a torch state
  dict read without torch), so that `check` validates them too. `directory` names their
  source in error messages."""

  def __init__(self, tensors: dict[str, np.ndarray], source: str):
    self._tensors, self.directory = dict(tensors), source

  def names(self) -> set[str]:
    return set(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._tensors[name].shape)

  def get(self, name: str) -> np.ndarray:
    return np.asarray(self._tensors[name], np.float32)


def _layers(abstract: Any, entry: Entry) -> int:
  return abstract.shape[0] if entry.stacked else 1


def check(reader: TensorReader | ArrayReader, table: Sequence[Entry],
          abstract_params: dict[str, Any],
          ignore: Sequence[str] = ()) -> None:
  """Every table row has its tensors with the shapes our parameters need, and the
  checkpoint holds nothing the table does not know (bar `ignore` substrings)."""
  flat = flatten(abstract_params)
  ours_in_table = {e.ours for e in table}
  if ours_in_table != set(flat):
    raise CheckpointError(f"mapping table and model disagree: table only "
                          f"{sorted(ours_in_table - set(flat))[:5]}, model only "
                          f"{sorted(set(flat) - ours_in_table)[:5]}")
  expected: dict[str, tuple[int, ...]] = {}
  for entry in table:
    abstract = flat[entry.ours]
    shape = abstract.shape[1:] if entry.stacked else abstract.shape
    for name in entry.theirs_names(_layers(abstract, entry)):
      expected[name] = entry.layout.theirs_shape(tuple(shape))
  names = reader.names()
  missing = sorted(set(expected) - names)
  if missing:
    raise CheckpointError(f"{reader.directory}: {len(missing)} tensors the config needs are "
                          f"missing, e.g. {missing[:5]} (more layers in the config than in "
                          "the checkpoint?)")
  unknown = sorted(n for n in names - set(expected) if not any(s in n for s in ignore))
  if unknown:
    raise CheckpointError(f"{reader.directory}: {len(unknown)} tensors are not part of the "
                          f"configured model, e.g. {unknown[:5]} (fewer layers in the config "
                          "than in the checkpoint, or another variant of the model?)")
  wrong = [(n, reader.shape(n), s) for n, s in expected.items() if reader.shape(n) != s]
  if wrong:
    name, got, want = wrong[0]
    raise CheckpointError(f"{reader.directory}: the weights do not fit the configured model: "
                          f"{name} is {got} in the checkpoint, the config needs {want} "
                          f"({len(wrong)} tensors differ)")


def _index_key(index: tuple[slice, ...]) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def load(directory: str | os.PathLike, table: Sequence[Entry], abstract_params: dict[str, Any],
         *, ignore: Sequence[str] = (),
         progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """The parameters of `abstract_params` (ShapeDtypeStructs with shardings) read from
  a diffusers directory through `table`, placed straight into their shardings."""
  reader = TensorReader(directory)
  try:
    check(reader, table, abstract_params, ignore)
    flat = flatten(abstract_params)
    out = {}
    for done, entry in enumerate(table):
      out[entry.ours] = _load_one(reader, entry, flat[entry.ours])
      if progress is not None:
        progress(done + 1, len(table))
  finally:
    reader.close()
  return unflatten_like(out, abstract_params)


def _load_one(reader: TensorReader, entry: Entry, abstract: Any) -> jax.Array:
  shape, dtype = tuple(abstract.shape), abstract.dtype
  sharding = abstract.sharding
  device_index = sharding.addressable_devices_indices_map(shape)
  # One buffer per distinct shard on this host (replicas share it).
  buffers: dict[tuple, tuple[tuple[slice, ...], np.ndarray]] = {}
  for index in device_index.values():
    key = _index_key(index)
    if key not in buffers:
      buffers[key] = (index, np.empty(np.empty(shape, np.bool_)[index].shape, dtype))
  if entry.stacked:
    per_layer = shape[1:]
    for i, name in enumerate(entry.theirs_names(shape[0])):
      tensor = entry.layout.to_ours(reader.get(name), per_layer)
      for index, buffer in buffers.values():
        layers = range(shape[0])[index[0]]
        if i in layers:
          buffer[layers.index(i)] = tensor[index[1:]]
  else:
    tensor = entry.layout.to_ours(reader.get(entry.theirs), shape)
    for index, buffer in buffers.values():
      buffer[...] = tensor[index]
  arrays = [jax.device_put(buffers[_index_key(index)][1], device)
            for device, index in device_index.items()]
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


# --- Writing. --------------------------------------------------------------------------------

def _host_tensors(table: Sequence[Entry], params: dict[str, Any],
                  dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
  """(diffusers name, tensor) for every row, one parameter on the host at a time."""
  from jax.experimental import multihost_utils
  flat = flatten(params)
  for entry in table:
    value = flat[entry.ours]
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
      value = multihost_utils.process_allgather(value, tiled=True)
    value = np.asarray(jax.device_get(value), dtype=np.float32)
    layers = [value[i] for i in range(value.shape[0])] if entry.stacked else [value]
    for name, layer in zip(entry.theirs_names(len(layers)), layers):
      yield name, np.ascontiguousarray(entry.layout.to_theirs(layer)).astype(dtype)


def save(directory: str | os.PathLike, table: Sequence[Entry], params: dict[str, Any],
         config: dict[str, Any], *, dtype: Any = np.float32,
         max_shard_size: int = DEFAULT_MAX_SHARD_BYTES, stem: str = DIFFUSERS_STEM) -> list[str]:
  """Writes `params` as a diffusers model directory (config.json + safetensors, sharded
  with an index when larger than `max_shard_size` bytes). Returns the files written.

  On a multi-host job every process must call it (shards are gathered); only
  process 0 writes. `stem` names the files (TRANSFORMERS_STEM for a transformers model).
  """
  from safetensors.numpy import save_file
  directory = pathlib.Path(directory)
  writer = jax.process_index() == 0
  if writer:
    directory.mkdir(parents=True, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, tensor in _host_tensors(table, params, np.dtype(dtype)):
    if shards[-1] and size + tensor.nbytes > max_shard_size:
      shards.append({})
      size = 0
    shards[-1][name] = tensor
    size += tensor.nbytes
    if not writer:
      shards[-1].pop(name)
  if not writer:
    return []
  metadata = {"format": "pt"}    # what diffusers / transformers expect in the header
  files = []
  if len(shards) == 1:
    save_file(shards[0], str(directory / f"{stem}.safetensors"), metadata=metadata)
    files.append(f"{stem}.safetensors")
  else:
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
      file = f"{stem}-{k + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, str(directory / file), metadata=metadata)
      files.append(file)
      weight_map.update({name: file for name in shard})
      total += sum(t.nbytes for t in shard.values())
    (directory / f"{stem}.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        indent=2) + "\n")
    files.append(f"{stem}.safetensors.index.json")
  (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
  files.append(CONFIG_NAME)
  return files
