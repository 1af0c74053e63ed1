"""Tests for the video DiT and its VideoJAM projections (videojam_jax/model/dit.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import CAPTIONS, FAST_COMPILE, tiny_config
from videojam_jax.data import text as text_lib
from videojam_jax.model import dit as model_lib
from videojam_jax.model import functional
from videojam_jax.parallel import sharding


def build(config):
  """The config's model in functional form (abstract: nothing allocated)."""
  return functional.build(config.model, model_lib.VideoShape.from_data_config(config.data),
                          sharding.ShardingPlan.from_config(config.mesh))


def inputs_for(config, batch=2):
  d, text = config.data, config.model.text
  video = jnp.zeros((batch, d.num_frames, d.height, d.width, 3))
  if text.source == "precomputed":
    ids = jnp.zeros((batch, text.max_length, text.embedding_dim))
  else:
    ids = jnp.zeros((batch, text.max_length), jnp.int32)
  return dict(x_t=video, d_t=video if config.model.jam else None, t=jnp.zeros((batch,)),
              text=ids, text_mask=jnp.ones((batch, text.max_length), bool),
              text_keep=jnp.ones((batch,), bool))


def test_patchify_unpatchify_round_trip():
  video = np.random.default_rng(0).standard_normal((2, 4, 8, 12, 3)).astype(np.float32)
  tokens = model_lib.patchify(video, (2, 4, 4))
  assert tokens.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3)
  back = model_lib.unpatchify(tokens, (2, 4, 4), (4, 8, 12, 3))
  np.testing.assert_array_equal(back, video)


def test_patchify_token_order_is_time_height_width():
  b, (t, h, w, c), (pt, ph, pw) = 1, (4, 8, 12, 3), (2, 4, 4)
  video = np.arange(b * t * h * w * c, dtype=np.float32).reshape(b, t, h, w, c)
  tokens = np.asarray(model_lib.patchify(video, (pt, ph, pw)))
  gt, gh, gw = t // pt, h // ph, w // pw
  for ti in range(gt):
    for hi in range(gh):
      for wi in range(gw):
        n = (ti * gh + hi) * gw + wi
        patch = video[0, ti * pt:(ti + 1) * pt, hi * ph:(hi + 1) * ph, wi * pw:(wi + 1) * pw]
        # Features are ordered (pt, ph, pw, c).
        np.testing.assert_array_equal(tokens[0, n], patch.reshape(-1))


def test_position_embedding_follows_token_order():
  grid, width = (2, 2, 3), 32
  emb = model_lib.video_position_embedding(grid, width)
  assert emb.shape == (12, width)
  dt = (width // 4) // 2 * 2
  dh = ((width - dt) // 2) // 2 * 2
  index = np.arange(12).reshape(grid)
  # Tokens in the same frame share the time part, tokens in the same row the height part.
  np.testing.assert_array_equal(emb[index[1, 0, 0], :dt], emb[index[1, 1, 2], :dt])
  assert not np.allclose(emb[index[0, 0, 0], :dt], emb[index[1, 0, 0], :dt])
  np.testing.assert_array_equal(emb[index[0, 1, 0], dt:dt + dh], emb[index[1, 1, 2], dt:dt + dh])
  assert not np.allclose(emb[index[0, 0, 0], dt:dt + dh], emb[index[0, 1, 0], dt:dt + dh])
  np.testing.assert_array_equal(emb[index[0, 0, 2], dt + dh:], emb[index[1, 1, 2], dt + dh:])


def _args(inputs, **changes):
  merged = {**inputs, **changes}
  return [merged[k] for k in ("x_t", "d_t", "t", "text", "text_mask", "text_keep")]


def test_output_shapes_jam_and_baseline(tiny_jam, tiny_base, model_inputs):
  u_x, u_d = tiny_jam.apply(tiny_jam.init_params, *_args(model_inputs))
  assert u_x.shape == u_d.shape == model_inputs["x_t"].shape
  assert u_x.dtype == u_d.dtype == jnp.float32
  u_x, u_d = tiny_base.apply(tiny_base.init_params, *_args(model_inputs, d_t=None))
  assert u_x.shape == model_inputs["x_t"].shape
  assert u_d is None
  assert "motion_patch_embed" not in tiny_base.init_params
  assert "motion_head" not in tiny_base.init_params


def test_jam_model_needs_motion_input(tiny_jam, model_inputs):
  with pytest.raises(ValueError, match="needs the motion input d_t"):
    tiny_jam.apply(tiny_jam.init_params, *_args(model_inputs, d_t=None))


def test_motion_rows_start_at_zero_so_video_ignores_motion(tiny_jam, model_inputs, perturb_params):
  params = tiny_jam.init_params
  assert not np.any(params["motion_patch_embed"]["kernel"])
  # Randomise everything else (heads and adaLN gates are zero at init, which would
  # make every output trivially zero), keeping the motion input rows at zero.
  params = perturb_params(params, seed=1, keep=("motion_patch_embed",))
  rng = np.random.default_rng(1)
  u_x, _ = tiny_jam.apply(params, *_args(model_inputs))
  assert float(jnp.abs(u_x).mean()) > 1e-2
  for _ in range(2):
    other_d = jnp.asarray(rng.standard_normal(model_inputs["d_t"].shape), jnp.float32)
    np.testing.assert_array_equal(tiny_jam.apply(params, *_args(model_inputs, d_t=other_d))[0], u_x)
  # Once the motion rows are non-zero, the video output reads the motion input.
  params["motion_patch_embed"] = {"kernel": 0.2 * rng.standard_normal(
      params["motion_patch_embed"]["kernel"].shape).astype(np.float32)}
  u_x1, _ = tiny_jam.apply(params, *_args(model_inputs))
  u_x2, _ = tiny_jam.apply(params, *_args(model_inputs, d_t=other_d))
  assert float(jnp.abs(u_x1 - u_x2).max()) > 1e-3


def test_null_text_ignores_the_caption(tiny_jam, model_inputs, perturb_params):
  params = perturb_params(tiny_jam.init_params, seed=2)
  drop = jnp.zeros((2,), bool)
  with_text, _ = tiny_jam.apply(params, *_args(model_inputs))
  null_text, _ = tiny_jam.apply(params, *_args(model_inputs, text_keep=drop))
  assert float(jnp.abs(with_text - null_text).max()) > 1e-3
  ids, mask = text_lib.tokenize(["something else entirely", "x"], 32)
  other_caption, _ = tiny_jam.apply(params, *_args(model_inputs, text=ids, text_mask=mask))
  assert float(jnp.abs(with_text - other_caption).max()) > 1e-3
  other_null, _ = tiny_jam.apply(params, *_args(model_inputs, text=ids, text_mask=mask, text_keep=drop))
  np.testing.assert_array_equal(other_null, null_text)
  # text_keep is per example: dropping one caption changes only that example.
  mixed, _ = tiny_jam.apply(params, *_args(model_inputs, text_keep=jnp.asarray([True, False])))
  np.testing.assert_allclose(mixed[0], with_text[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixed[1], null_text[1], rtol=1e-5, atol=1e-6)


def test_precomputed_text_embeddings(make_tiny_config):
  config = make_tiny_config(jam=False)
  config.model.text.source = "precomputed"
  config.model.text.embedding_dim = 24
  model = build(config)
  inputs = inputs_for(config)
  assert inputs["text"].shape == (2, 32, 24)
  params = model.abstract_params
  assert "text_encoder" not in params
  assert params["text_proj"]["kernel"].shape == (24, 32)
  u_x, u_d = jax.eval_shape(model.apply, params, *_args(inputs))
  assert u_x.shape == inputs["x_t"].shape and u_d is None
  wrong = dict(inputs, text=jnp.zeros((2, 32, 16)))
  with pytest.raises(ValueError, match=r"precomputed text embeddings must be \[B, L, 24\], got \(2, 32, 16\)"):
    jax.eval_shape(model.apply, params, *_args(wrong))
  ids = dict(inputs, text=jnp.zeros((2, 32), jnp.int32))
  with pytest.raises(ValueError, match="precomputed text embeddings"):
    jax.eval_shape(model.apply, params, *_args(ids))


def test_builtin_text_rejects_embeddings(tiny_jam, model_inputs):
  with pytest.raises(ValueError, match=r"takes token ids \[B, L\]"):
    jax.eval_shape(tiny_jam.apply, tiny_jam.init_params,
                   *_args(model_inputs, text=jnp.zeros((2, 32, 32))))


@pytest.mark.parametrize("field, size", [("num_frames", 5), ("height", 18), ("width", 10)])
def test_indivisible_patch_size_is_a_clear_error(make_tiny_config, field, size):
  config = make_tiny_config()
  config.data[field] = size
  with pytest.raises(ValueError, match=rf"data.{field}={size} is not divisible by model.patch_size \(2, 4, 4\)"):
    build(config)


def test_xavier_motion_input_init_reads_motion_from_the_start(model_inputs, perturb_params):
  config = tiny_config()
  config.model.motion_input_init = "xavier"
  model = build(config)
  params = jax.device_get(model.init(jax.random.key(0)))
  kernel = np.asarray(params["motion_patch_embed"]["kernel"])
  assert np.all(np.isfinite(kernel)) and float(np.abs(kernel).mean()) > 1e-2
  # Only the motion rows are kept as initialised; the zero heads are perturbed.
  params = perturb_params(params, seed=2, keep=("motion_patch_embed",))
  apply = jax.jit(model.apply)
  u_x1, _ = apply(params, *_args(model_inputs))
  u_x2, _ = apply(params, *_args(model_inputs, d_t=-model_inputs["d_t"]))
  assert float(jnp.abs(u_x1 - u_x2).max()) > 1e-3


def test_every_parameter_has_logical_axis_names():
  """Each weight is annotated (out_sharding metadata) and stacked blocks carry 'layers'."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  plan = sharding.ShardingPlan.from_config(config.mesh)
  shape = model_lib.VideoShape.from_data_config(config.data)
  with plan.active():
    abstract = nnx.eval_shape(lambda: model_lib.build_model(config.model, shape, rngs=nnx.Rngs(0)))
  unnamed, count = [], 0
  for path, var in nnx.to_flat_state(nnx.state(abstract)):
    count += 1
    names = var.get_metadata().get("out_sharding")
    if not names or len(names) != len(var.shape):
      unnamed.append("/".join(map(str, path)))
    elif path[0] == "blocks" or path[:2] == ("text_encoder", "layers"):
      assert names[0] == "layers", path
    for name in names or ():
      assert name is None or name in dict(sharding.DEFAULT_RULES), (path, name)
  assert count > 40 and not unnamed, unnamed


def test_scanned_blocks_compile_once_whatever_the_depth():
  """The blocks run under one scan: the traced program does not grow with depth."""
  sizes = []
  for depth in (2, 6):
    config = tiny_config()
    config.model.depth = depth
    model = build(config)
    inputs = inputs_for(config)
    jaxpr = jax.make_jaxpr(model.apply)(model.abstract_params, *_args(inputs))
    sizes.append(len(str(jaxpr)))
  assert abs(sizes[1] - sizes[0]) < 0.02 * sizes[0], sizes


def _grad_fn(model, model_inputs):
  return jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, *_args(model_inputs))[0] ** 2)),
                 compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def plain_gradients(model_inputs, perturb_params):
  """(params, their gradients without rematerialisation): shared by the remat policies."""
  model = build(tiny_config())
  params = perturb_params(jax.device_get(model.init(jax.random.key(0))), seed=4)
  return params, _grad_fn(model, model_inputs)(params)


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_changes_memory_not_results(model_inputs, plain_gradients, policy):
  config = tiny_config()
  config.model.remat_policy = policy
  remat = build(config)
  params, g_plain = plain_gradients
  g_remat = _grad_fn(remat, model_inputs)(params)
  # Gradients reach ~1e4 here and rematerialisation reorders float32 sums: compare
  # at float32 resolution of the largest gradient (small leaves are cancellation noise).
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g_plain))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale),
               g_remat, g_plain)
  assert "remat" in str(jax.make_jaxpr(remat.apply)(params, *_args(model_inputs)))


def test_pooled_text_qk_norm_and_rope_options(make_tiny_config, model_inputs, perturb_params):
  """The options add their weights (qk norms, the pooled-text projection) and run;
  pooled text follows the caption but not its padding."""
  config = make_tiny_config(jam=False)
  config.model.text.pooled = True
  config.model.qk_norm = True
  config.model.rope_theta = 100.0
  model = build(config)
  params = perturb_params(jax.device_get(model.init(jax.random.key(0, impl="unsafe_rbg"))), seed=3)
  assert params["text_pool"]["kernel"].shape == (32, 32)
  assert "query_norm" in params["blocks"]["self_attn"]
  apply = jax.jit(model.apply, compiler_options=FAST_COMPILE)
  inputs = dict(model_inputs, d_t=None)
  out, _ = apply(params, *_args(inputs))
  # Padding columns past the caption are masked in the pooled mean too.
  ids, mask = text_lib.tokenize(list(CAPTIONS), config.model.text.max_length)
  padded_ids = ids.copy()
  padded_ids[~mask] = 77         # garbage under the padding
  other, _ = apply(params, *_args(inputs, text=jnp.asarray(padded_ids)))
  np.testing.assert_allclose(other, out, rtol=1e-5, atol=1e-6)
  # The pooled path alone carries the caption: with cross-attention's output zeroed,
  # another caption still changes the velocity.
  no_cross = jax.tree.map(lambda a: a, params)
  no_cross["blocks"]["cross_attn"]["out"]["kernel"] = np.zeros_like(
      params["blocks"]["cross_attn"]["out"]["kernel"])
  no_cross["blocks"]["cross_attn"]["out"]["bias"] = np.zeros_like(
      params["blocks"]["cross_attn"]["out"]["bias"])
  ids2, mask2 = text_lib.tokenize(["a different caption", "and another"], config.model.text.max_length)
  a, _ = apply(no_cross, *_args(inputs))
  b, _ = apply(no_cross, *_args(inputs, text=jnp.asarray(ids2), text_mask=jnp.asarray(mask2)))
  assert float(jnp.abs(a - b).max()) > 1e-3
