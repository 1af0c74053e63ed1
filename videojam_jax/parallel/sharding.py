"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters and large activations carry *logical* axis names ("embed", "mlp",
"heads", "activation_batch", ...). A rules table maps each logical name to
mesh axes ("data", "fsdp", "tensor"); changing the parallelism of a run is a
config change (mesh sizes + rules name), never a model change. This is the
MaxText / MaxDiffusion habit.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = tuple[tuple[str, Any], ...]

# Batch is split over data and fsdp (FSDP is data parallelism whose parameters are
# sharded too); weights are sharded on their embed dimension over fsdp and on
# heads / mlp over tensor (Megatron-style tensor parallelism).
DEFAULT_RULES: LogicalRules = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_kv", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("patch", None),
    ("vocab", None),
    ("norm", None),
    ("layers", None),
)

# Sequence parallel variant for very long videos: tokens split over tensor.
SEQUENCE_PARALLEL_RULES: LogicalRules = tuple(
    (name, "tensor") if name == "activation_length" else
    (name, None) if name in ("activation_heads", "activation_mlp") else (name, axes)
    for name, axes in DEFAULT_RULES)

RULES = {"default": DEFAULT_RULES, "sequence_parallel": SEQUENCE_PARALLEL_RULES}


class MeshConfigError(ValueError):
  """The requested mesh does not fit the devices or the batch."""


def get_rules(name: str) -> LogicalRules:
  """The logical-axis rules table called `name`."""
  if name not in RULES:
    raise MeshConfigError(f"unknown mesh.rules {name!r}; choose one of {sorted(RULES)}")
  return RULES[name]


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Resolves axis sizes (one may be -1: 'the rest') against the device count."""
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise MeshConfigError(f"at most one mesh axis may be -1, got {sizes}")
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise MeshConfigError(f"mesh axis sizes must be positive or -1, got {sizes}")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if num_devices % fixed:
      raise MeshConfigError(
          f"mesh {sizes}: {num_devices} devices are not divisible by {fixed}")
    sizes[free[0]] = num_devices // fixed
  if int(np.prod(list(sizes.values()))) != num_devices:
    raise MeshConfigError(
        f"mesh {sizes} needs {int(np.prod(list(sizes.values())))} devices, "
        f"but {num_devices} are available")
  return sizes


def create_mesh(mesh_config: ml_collections.ConfigDict,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh with axes (data, fsdp, tensor) over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except (AssertionError, NotImplementedError, ValueError):
    # Fake CPU devices and AOT topologies have no physical layout to optimise for.
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def batch_axis_size(mesh: Mesh, rules: LogicalRules) -> int:
  """How many ways the global batch is split by `rules` on `mesh`."""
  spec = nn.logical_to_mesh_axes(("activation_batch",), rules)[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return int(np.prod([mesh.shape[a] for a in axes]))


def check_batch_divisible(global_batch: int, mesh: Mesh, rules: LogicalRules) -> None:
  """Clear error when the batch cannot be split evenly over the mesh and hosts."""
  ways = batch_axis_size(mesh, rules)
  if global_batch % ways:
    raise MeshConfigError(
        f"train.batch_size={global_batch} cannot be split over the {ways} batch "
        f"shards of mesh {dict(mesh.shape)}; use a multiple of {ways}")
  if global_batch % jax.process_count():
    raise MeshConfigError(
        f"train.batch_size={global_batch} is not divisible by the "
        f"{jax.process_count()} processes")


def logical_sharding(mesh: Mesh, rules: LogicalRules, *logical_axes: str | None) -> NamedSharding:
  """NamedSharding for an array whose dimensions have these logical names."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(logical_axes, rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def tree_shardings(mesh: Mesh, rules: LogicalRules, abstract_tree: Any) -> Any:
  """Shardings for a tree of (possibly nn.Partitioned-boxed) abstract arrays.

  Leaves boxed with logical names get their mapped sharding; unboxed leaves
  (step counters, optimizer scalars) are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), mesh_specs,
                      is_leaf=lambda x: isinstance(x, P))


# The mesh that activation constraints refer to while model code is traced. Kept
# in our own context variable rather than jax.set_mesh: with a global mesh, Flax
# also re-constrains every boxed parameter inside nn.scan, where the stacked
# 'layers' axis is already sliced off, which fails.
_TRACE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("mesh", default=None)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Mesh + logical-axis rules in scope: needed while tracing sharded model code."""
  token = _TRACE_MESH.set(mesh)
  try:
    with nn.logical_axis_rules(rules):
      yield
  finally:
    _TRACE_MESH.reset(token)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """Constrains an activation's layout by logical names (no-op outside mesh_context)."""
  mesh = _TRACE_MESH.get()
  if mesh is None:
    return x
  return nn.with_logical_constraint(x, logical_axes, mesh=mesh)
