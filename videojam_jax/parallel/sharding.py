"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters and large activations carry *logical* axis names ("embed", "mlp",
"heads", "activation_batch", ...). A rules table maps each logical name to mesh
axes ("data", "fsdp", "tensor"); changing the parallelism of a run is a config
change (mesh sizes + rules name), never a model change. This is the MaxText /
MaxDiffusion habit.

A `ShardingPlan` (mesh + rules) is built once per run and handed to whatever
places arrays. `plan.active()` puts both in scope the way Flax NNX expects them:
`jax.set_mesh(mesh)` and `nnx.logical_axis_rules(rules)`. Inside it, NNX places
every parameter it creates by its logical names, and `constrain` lays out
activations; outside it (no mesh), `constrain` is a no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
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
    ("conv", None),          # VAE conv channels: the VAE is small, replicated
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
  """A Mesh with axes (data, fsdp, tensor) over `devices` (default: all).

  jax.make_mesh orders the devices for the physical topology. The axes are Auto
  (GSPMD propagation from our constraints), not Explicit sharding-in-types.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], rules: LogicalRules) -> P:
  """The PartitionSpec for an array whose dimensions have these logical names.

  Unlike Flax's rule lookup (which passes unknown names through as mesh axes),
  a name the table does not know is an error here: it is always a typo.
  """
  table = dict(rules)
  unknown = [a for a in logical_axes if a is not None and a not in table]
  if unknown:
    raise MeshConfigError(f"logical axes {unknown} have no rule; the table knows {sorted(table)}")
  return P(*(None if a is None else table[a] for a in logical_axes))


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """Constrains an activation's layout by logical names (a no-op outside `plan.active()`)."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(
      x, logical_to_spec(logical_axes, flax_spmd.get_logical_axis_rules()))


def current_spec(logical_axes: Sequence[str | None]) -> P | None:
  """The PartitionSpec of these logical axes under the active plan; None without a mesh."""
  if jax.sharding.get_abstract_mesh().empty:
    return None
  return logical_to_spec(logical_axes, flax_spmd.get_logical_axis_rules())


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
  """A run's mesh and its logical-axis rules: built once, handed to everything that
  places arrays (state init, the train step, samplers, checkpoint restores)."""
  mesh: Mesh
  rules: LogicalRules

  @classmethod
  def from_config(cls, mesh_config: ml_collections.ConfigDict,
                  devices: Sequence[jax.Device] | None = None) -> "ShardingPlan":
    """config.mesh: axis sizes and the rules table's name."""
    return cls(create_mesh(mesh_config, devices), get_rules(mesh_config.get("rules", "default")))

  @contextlib.contextmanager
  def active(self) -> Iterator[None]:
    """The mesh and rules in scope, as Flax NNX and `constrain` look them up."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      yield

  def sharding(self, *logical_axes: str | None) -> NamedSharding:
    """NamedSharding for an array whose dimensions have these logical names."""
    return NamedSharding(self.mesh, logical_to_spec(logical_axes, self.rules))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def batch_sharding(self, ndim: int) -> NamedSharding:
    """Split on the leading (batch) axis, the rest replicated."""
    return self.sharding("activation_batch", *([None] * (ndim - 1)))

  def tree_shardings(self, abstract_state: Any) -> Any:
    """NamedShardings for an nnx.State (or pytree of Variables) by their logical names.

    Leaves without names (step counters, optimizer scalars) are replicated.
    """
    with self.active():
      return nnx.get_named_sharding(abstract_state, self.mesh)

  @property
  def batch_ways(self) -> int:
    """How many ways the global batch is split."""
    spec = logical_to_spec(("activation_batch",), self.rules)[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return int(np.prod([self.mesh.shape[a] for a in axes]))

  def check_batch_divisible(self, global_batch: int, what: str = "train.batch_size") -> None:
    """Clear error when the batch cannot be split evenly over the mesh and hosts."""
    ways = self.batch_ways
    if global_batch % ways:
      raise MeshConfigError(
          f"{what}={global_batch} cannot be split over the {ways} batch "
          f"shards of mesh {dict(self.mesh.shape)}; use a multiple of {ways}")
    if global_batch % jax.process_count():
      raise MeshConfigError(
          f"{what}={global_batch} is not divisible by the {jax.process_count()} processes")
