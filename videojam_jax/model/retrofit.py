"""Turning a base (pixel-only) DiT checkpoint into a VideoJAM one (DESIGN.md §1).

VideoJAM changes exactly two linear layers: the input projection gains motion
rows, W_in+ = [W_in ; 0], and the output projection gains a motion head,
W_out+ = [W_out, W_out_m]. With the motion rows at zero the retrofitted model's
video output equals the base model's, whatever the motion input.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# Where each model family keeps VideoJAM's two additions and the video head the motion
# head starts from ('/'-joined parameter paths): the DiT's, and Wan's (inside its
# transformer, so that its blocks keep the diffusers layout).
JAM_LAYOUTS = (
    dict(motion_input="motion_patch_embed", motion_head="motion_head", video_head="video_head"),
    dict(motion_input="transformer/motion_patch_embedding",
         motion_head="transformer/motion_proj_out", video_head="transformer/proj_out"),
)


class RetrofitError(ValueError):
  """The checkpoint does not fit the model it is loaded into."""


def _get(tree: dict[str, Any], path: str) -> Any:
  for key in path.split("/"):
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _without(tree: dict[str, Any], paths: list[str]) -> dict[str, Any]:
  """A copy of the nested dict `tree` without the entries at `paths`."""
  out = dict(tree)
  for path in paths:
    head, _, rest = path.partition("/")
    if rest and isinstance(out.get(head), dict):
      out[head] = _without(out[head], [rest])
    elif not rest:
      out.pop(head, None)
  return out


def _with(tree: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
  head, _, rest = path.partition("/")
  out = dict(tree)
  out[head] = _with(out.get(head, {}), rest, value) if rest else value
  return out


def _layout(params: dict[str, Any]) -> dict[str, str] | None:
  """The family layout whose motion projections `params` has, or None."""
  for layout in JAM_LAYOUTS:
    if _get(params, layout["motion_input"]) is not None and _get(params, layout["motion_head"]) is not None:
      return layout
  return None


def is_jam(params: dict[str, Any]) -> bool:
  """Whether a parameter tree (arrays or shapes) has VideoJAM's motion projections."""
  return _layout(params) is not None


def base_params_like(jam_params_like: dict[str, Any]) -> dict[str, Any]:
  """The part of a VideoJAM parameter tree that its base model has."""
  layout = _layout(jam_params_like)
  if layout is None:
    raise RetrofitError("the target model has no VideoJAM motion projections")
  return _without(jam_params_like, [layout["motion_input"], layout["motion_head"]])


def _leaf_paths(tree: Any, prefix: str = "") -> set[str]:
  if not isinstance(tree, dict):
    return {prefix}
  return set().union(*[_leaf_paths(v, f"{prefix}/{k}" if prefix else k) for k, v in tree.items()]) \
      if tree else set()


MOTION_HEAD_INITS = ("copy", "zeros")


def base_to_jam(base_params: dict[str, Any], jam_params_like: dict[str, Any],
                motion_head: str = "copy") -> dict[str, Any]:
  """Base parameters + zero motion input rows + a motion head (jnp; jit it to place them).

  `jam_params_like` (arrays or ShapeDtypeStructs) gives the target structure.
  motion_head "copy" (the default) starts the motion head as a copy of the video
  head: motion videos go through the same autoencoder as the frames, so the video
  head is the nearest sensible start, with the video head's output scale. "zeros"
  starts it at zero (the motion prediction is 0 until it learns). Neither changes
  the video output.
  """
  if motion_head not in MOTION_HEAD_INITS:
    raise RetrofitError(f"motion head init {motion_head!r}: choose from {MOTION_HEAD_INITS}")
  if is_jam(base_params):
    raise RetrofitError("checkpoint is already a VideoJAM model; load it directly")
  layout = _layout(jam_params_like)
  expected_tree = base_params_like(jam_params_like)
  expected, found = set(expected_tree), set(base_params)       # top-level names first
  if found == expected:
    expected, found = _leaf_paths(expected_tree), _leaf_paths(base_params)
  if found != expected:
    raise RetrofitError(
        f"base checkpoint does not match the model: missing {sorted(expected - found)[:5]}, "
        f"unexpected {sorted(found - expected)[:5]}")
  motion_input = _get(jam_params_like, layout["motion_input"])
  params = _with(base_params, layout["motion_input"],
                 jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), motion_input))
  video_head = _get(base_params, layout["video_head"])
  init = jnp.array if motion_head == "copy" else jnp.zeros_like
  return _with(params, layout["motion_head"], jax.tree.map(init, video_head))
