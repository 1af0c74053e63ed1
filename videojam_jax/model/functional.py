"""A model in Flax NNX's functional style: split once, then pure functions of the params.

`nnx.split` separates a module into its static graph definition and its state.
Everything that runs under `jax.jit` (the train step, the sampler, evaluators)
takes the parameters as a plain pytree (nested dicts of arrays: what Orbax and
optax work on) and rebuilds the module inside the traced function with
`nnx.merge`. The merge costs only trace time, so small models run as fast as
hand-written JAX; nothing NNX-specific crosses a jit boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from videojam_jax.model import dit
from videojam_jax.model import lora as lora_lib
from videojam_jax.model.wan import video_model as wan_video_model
from videojam_jax.parallel import sharding

Params = dict[str, Any]
# config.model.family -> the builder of its model (same call signature, same outputs).
MODEL_FAMILIES: dict[str, Callable[..., nnx.Module]] = {
    "dit": dit.build_model,
    "wan": wan_video_model.build_model,
}


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
  """A VideoDiT as (graph definition, abstract params) on a sharding plan.

  abstract_params: jax.ShapeDtypeStruct leaves, each with the NamedSharding its
  logical axis names map to on `plan`: a restore or an init can place arrays
  straight there. `lora`: LoRA fine-tuning (model/lora.py), or None.
  """
  graphdef: nnx.GraphDef
  abstract_params: Params
  video_shape: dit.VideoShape
  jam: bool
  plan: sharding.ShardingPlan
  _create: Callable[[nnx.Rngs], dit.VideoDiT] = dataclasses.field(repr=False)
  lora: lora_lib.LoraConfig | None = None

  @property
  def shardings(self) -> Params:
    """The NamedSharding of every parameter."""
    return jax.tree.map(lambda a: a.sharding, self.abstract_params)

  def module(self, params: Params) -> dit.VideoDiT:
    """The module with these parameters (call inside a traced function)."""
    return nnx.merge(self.graphdef, params)

  def apply(self, params: Params, *args: Any, **kwargs: Any) -> tuple[jax.Array, jax.Array | None]:
    """VideoDiT.__call__ with these parameters: (u_x, u_d)."""
    return self.module(params)(*args, **kwargs)

  def encode_text(self, params: Params, text: jax.Array, text_mask: jax.Array) -> jax.Array:
    """VideoDiT.encode_text with these parameters: the caption tokens the blocks attend to."""
    return self.module(params).encode_text(text, text_mask)

  def init(self, key: jax.Array) -> Params:
    """Freshly initialised parameters, created directly in their shardings."""
    return init_params(self._create, self.abstract_params, self.plan, key)

  def init_adapters(self, key: jax.Array) -> Params:
    """Only the LoRA adapters of a fresh `init(key)` (the rest is never computed)."""
    return init_params(self._create, self.abstract_params, self.plan, key,
                       select=lora_lib.adapters_only)


def init_params(create: Callable[[nnx.Rngs], nnx.Module], abstract_params: Params,
                plan: sharding.ShardingPlan, key: jax.Array,
                select: Callable[[Params], Params] = lambda p: p) -> Params:
  """The parameters of `create(rngs)` (or the part `select` keeps), initialised in one
  jitted program with out_shardings: each lands straight in its sharding, no host holds
  the whole model, and a many-layered model is not initialised op by op. What `select`
  drops is dead code: XLA never computes it."""
  def init(key: jax.Array) -> Params:
    return select(nnx.to_pure_dict(nnx.state(create(nnx.Rngs(params=key)))))
  with plan.active():
    return jax.jit(init, out_shardings=jax.tree.map(lambda a: a.sharding,
                                                    select(abstract_params)))(key)


def abstract_split(create: Callable[[], nnx.Module],
                   plan: sharding.ShardingPlan) -> tuple[nnx.GraphDef, Params]:
  """(graphdef, abstract params): `create()` traced abstractly (nothing allocated) and
  split once; each leaf a ShapeDtypeStruct with the NamedSharding its logical axis
  names map to on `plan`."""
  with plan.active():
    abstract = nnx.eval_shape(create)
  graphdef, state = nnx.split(abstract)
  shardings = nnx.to_pure_dict(plan.tree_shardings(state))
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nnx.to_pure_dict(state), shardings)
  return graphdef, params


def build(model_config: ml_collections.ConfigDict, video_shape: dit.VideoShape,
          plan: sharding.ShardingPlan) -> FunctionalModel:
  """Builds the model of `model_config` (model.family: the DiT, or Wan 2.1) abstractly
  (nothing allocated) and splits it once."""
  family = model_config.get("family", "dit")
  if family not in MODEL_FAMILIES:
    raise ValueError(f"model.family must be one of {sorted(MODEL_FAMILIES)}, got {family!r}")
  lora = lora_lib.LoraConfig.from_model_config(model_config)
  if lora is not None and family != "wan":
    raise lora_lib.LoraConfigError(
        f"model.lora.rank={lora.rank}: LoRA fine-tuning is built for model.family='wan' "
        f"only, not {family!r} (set model.lora.rank=0 to train every weight)")

  def create(rngs: nnx.Rngs) -> nnx.Module:
    return MODEL_FAMILIES[family](model_config, video_shape, rngs=rngs)
  graphdef, abstract_params = abstract_split(lambda: create(nnx.Rngs(params=0)), plan)
  return FunctionalModel(graphdef, abstract_params, video_shape, bool(model_config.jam), plan,
                         create, lora)
