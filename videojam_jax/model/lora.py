"""LoRA fine-tuning: low-rank adapters beside frozen base weights (config.model.lora).

With `model.lora.rank > 0` (Wan only) every attention projection (q, k, v, out of
self- and cross-attention) and both FFN layers of every block gain an adapter
`x -> (alpha / rank) * (x A) B`, added to the layer's output. B starts at zero, so a
fresh adapter changes nothing: a LoRA model starts exactly as its base.

Training splits the parameters once into the trainable part (the adapters, and
VideoJAM's motion input rows and motion head, which are new and trained in full) and
the frozen rest. Only the trainable part has gradients, AdamW moments and an EMA; the
frozen base is stored once, in `frozen_dtype` (bfloat16 halves it), and merged back
in inside the loss. That is what lets Wan-14B fine-tune on a small slice.

Flax's `nnx.LoRA` is not used: it takes flat feature counts and has no scale, while
these adapters sit beside `LinearGeneral`s with (heads, head_dim) axes and carry
logical axis names like every other weight.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from flax import traverse_util

from videojam_jax.model import retrofit

ADAPTER_SUFFIX = "_lora"   # the adapter of layer `to_q` is the sibling module `to_q_lora`
ADAPTER_A, ADAPTER_B = "lora_a", "lora_b"
FROZEN_DTYPES = ("float32", "bfloat16")


class LoraConfigError(ValueError):
  """An impossible config.model.lora."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank: adapter rank; alpha: the scale numerator (output scale alpha / rank);
  frozen_dtype: the storage dtype of the frozen base weights during training."""
  rank: int
  alpha: float
  frozen_dtype: str = "float32"

  def __post_init__(self):
    if self.rank <= 0:
      raise LoraConfigError(f"model.lora.rank must be positive, got {self.rank}")
    if self.alpha <= 0:
      raise LoraConfigError(f"model.lora.alpha must be positive, got {self.alpha}")
    if self.frozen_dtype not in FROZEN_DTYPES:
      raise LoraConfigError(f"model.lora.frozen_dtype must be one of {FROZEN_DTYPES}, "
                            f"got {self.frozen_dtype!r}")

  @property
  def scale(self) -> float:
    return float(self.alpha) / int(self.rank)

  @classmethod
  def from_model_config(cls, model_config: ml_collections.ConfigDict) -> "LoraConfig | None":
    """None when LoRA is off (no model.lora, or rank 0: full fine-tuning)."""
    lora = model_config.get("lora")
    if lora is None or int(lora.get("rank", 0)) == 0:
      return None
    return cls(int(lora.rank), float(lora.get("alpha", lora.rank)),
               str(lora.get("frozen_dtype", "float32")))


class LowRankAdapter(nnx.Module):
  """`x -> scale * (x A) B` over the trailing input axes of a projection.

  A [*in_shape, rank] starts uniform in +-1/sqrt(fan_in) (PEFT's default), B
  [rank, *out_shape] at zero. `in_axes` / `out_axes` are the logical axis names of the
  projection's input and output dimensions; the rank axis is replicated.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], config: LoraConfig, *,
               in_axes: Sequence[str | None], out_axes: Sequence[str | None], dtype: Any,
               rngs: nnx.Rngs):
    self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
    self.scale, self.dtype = config.scale, jnp.dtype(dtype)
    bound = 1.0 / math.sqrt(math.prod(self.in_shape))

    def uniform(key, shape, dtype):
      return jax.random.uniform(key, shape, dtype, -bound, bound)
    self.lora_a = nnx.Param(nnx.with_partitioning(uniform, (*in_axes, None))(
        rngs.params(), (*self.in_shape, config.rank), jnp.float32))
    self.lora_b = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(),
                                                  (None, *out_axes))(
        rngs.params(), (config.rank, *self.out_shape), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    lead = x.shape[:x.ndim - len(self.in_shape)]
    a = self.lora_a[...].astype(self.dtype).reshape(-1, self.lora_a.shape[-1])
    b = self.lora_b[...].astype(self.dtype).reshape(self.lora_b.shape[0], -1)
    h = x.astype(self.dtype).reshape(*lead, -1) @ a
    return (self.scale * (h @ b)).reshape(*lead, *self.out_shape)


# --- The trainable / frozen split of a parameter tree (nested dicts).

Path = tuple[str, ...]


def is_adapter(path: Path) -> bool:
  return any(str(key).endswith(ADAPTER_SUFFIX) for key in path)


def _motion_prefixes() -> list[Path]:
  return [tuple(layout[k].split("/")) for layout in retrofit.JAM_LAYOUTS
          for k in ("motion_input", "motion_head")]


def is_trainable(path: Path) -> bool:
  """Adapters and VideoJAM's motion projections train; everything else is frozen."""
  path = tuple(str(k) for k in path)
  return is_adapter(path) or any(path[:len(p)] == p for p in _motion_prefixes())


def split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(trainable, frozen): two disjoint nested dicts whose `merge` is `params`."""
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if is_trainable(k)}
  frozen = {k: v for k, v in flat.items() if not is_trainable(k)}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(*trees: dict[str, Any]) -> dict[str, Any]:
  """The union of disjoint nested dicts (the inverse of `split`)."""
  flat: dict[Path, Any] = {}
  for tree in trees:
    for key, value in traverse_util.flatten_dict(tree).items():
      if key in flat:
        raise ValueError(f"parameter {'/'.join(map(str, key))} is in more than one tree")
      flat[key] = value
  return traverse_util.unflatten_dict(flat)


def has_adapters(params: dict[str, Any]) -> bool:
  return any(is_adapter(k) for k in traverse_util.flatten_dict(params))


def without_adapters(params: dict[str, Any]) -> dict[str, Any]:
  """The tree without its adapter modules (what the base model has)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not is_adapter(k)})


def adapters_only(params: dict[str, Any]) -> dict[str, Any]:
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if is_adapter(k)})


def fold(params: dict[str, Any], scale: float) -> dict[str, Any]:
  """The adapters merged into their layers' kernels, W + scale * A B (jnp; jit it to
  place the result): the plain model with the same outputs, e.g. for export."""
  flat = traverse_util.flatten_dict(params)
  out = {k: v for k, v in flat.items() if not is_adapter(k)}
  for key in [k for k in flat if k[-1] == ADAPTER_A and is_adapter(k)]:
    module = key[:-1]
    kernel_key = module[:-1] + (str(module[-1])[:-len(ADAPTER_SUFFIX)], "kernel")
    if kernel_key not in out:
      raise ValueError(f"adapter {'/'.join(map(str, module))} has no layer "
                       f"{'/'.join(map(str, kernel_key))} to fold into")
    a, b, kernel = flat[key], flat[module + (ADAPTER_B,)], out[kernel_key]
    lead = a.ndim + b.ndim - 2 - kernel.ndim           # stacked 'layers' axes
    a2 = jnp.reshape(a, a.shape[:lead] + (-1, a.shape[-1]))
    b2 = jnp.reshape(b, b.shape[:lead + 1] + (-1,))
    delta = (scale * jnp.matmul(a2.astype(jnp.float32), b2.astype(jnp.float32)))
    out[kernel_key] = (kernel.astype(jnp.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)
  return traverse_util.unflatten_dict(out)
