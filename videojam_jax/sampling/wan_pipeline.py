"""Text to video with a diffusers Wan 2.1 pipeline folder, in JAX: prompts -> MP4 frames.

  pipeline = WanPipeline("Wan2.1-T2V-1.3B-Diffusers", plan)
  video, motion, latents = pipeline.generate(prompts, num_frames=81, height=480,
                                             width=832, settings=settings)

The folder is what `WanPipeline.save_pretrained` (diffusers) writes and what the
hub publishes: tokenizer/ and text_encoder/ (umT5), transformer/, vae/ and
scheduler/. The prompts go through umT5 (`model.wan.text`), the latents are
integrated by our sampler (`sampling.sampler.sample_loop`, one batched forward
for the prompt and the negative prompt, Wan's CFG) on the time grid of the
diffusers scheduler named in the settings, then decoded by the VAE.

Conventions: diffusers integrates sigma from 1 (noise) to 0 with guidance_scale
g; ours runs t = 1 - sigma from 0 to 1 with text_scale w1 = g - 1 (the same
combination: u_neg + g (u - u_neg) = (1 + w1) u - w1 u_neg). With the
`flow_match_euler` schedule and the Euler solver this is the reference pipeline
with FlowMatchEulerDiscreteScheduler step for step (tested). The published
pipelines use UniPC (`unipc_flow`): we place the steps at its sigmas but
integrate with Euler or Heun, not UniPC's multistep predictor-corrector.

A folder whose transformer takes twice the VAE's channels is a Wan-VideoJAM export
(`python -m videojam_jax.export` of a jam run): it is loaded with its motion
projections split off again, sampled with Inner-Guidance, and both latents are
decoded (the motion video beside the frames in the MP4s).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from videojam_jax.data import motion_encoding
from videojam_jax.data import video_io
from videojam_jax.evaluation import motion_metrics
from videojam_jax.model import diffusers_format as fmt
from videojam_jax.model import dit
from videojam_jax.model import functional
from videojam_jax.model.wan import text as text_lib
from videojam_jax.model.wan import transformer as transformer_lib
from videojam_jax.model.wan import vae as vae_lib
from videojam_jax.model.wan import video_model
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding
from videojam_jax.sampling import sampler as sampler_lib

PIPELINE_CLASS = "WanPipeline"
COMPONENTS = ("tokenizer", "text_encoder", "transformer", "vae")
# The diffusers schedulers whose sigmas time_grid reproduces, and their shift field.
SCHEDULERS = {"UniPCMultistepScheduler": ("unipc_flow", "flow_shift"),
              "FlowMatchEulerDiscreteScheduler": ("flow_match_euler", "shift")}
# Wan's negative prompt default in diffusers' WanPipeline is the empty string.
DEFAULT_NEGATIVE_PROMPT = ""


class PipelineError(ValueError):
  """A folder that is not a usable Wan pipeline, or a request it cannot serve."""


@dataclasses.dataclass(frozen=True)
class SchedulerDefaults:
  """What the pipeline's scheduler/scheduler_config.json says about sampling."""
  schedule: str
  shift: float


def read_scheduler(directory: str | pathlib.Path) -> SchedulerDefaults | None:
  """The schedule and shift of a pipeline's scheduler/, or None if it has none we know."""
  path = pathlib.Path(directory) / "scheduler" / "scheduler_config.json"
  if not path.exists():
    return None
  config = json.loads(path.read_text())
  known = SCHEDULERS.get(config.get("_class_name"))
  if known is None:
    return None
  schedule, shift_field = known
  return SchedulerDefaults(schedule, float(config.get(shift_field, 1.0)))


def check_pipeline_dir(directory: str | pathlib.Path) -> pathlib.Path:
  """`directory` as a Path once it is known to hold a diffusers Wan pipeline."""
  directory = pathlib.Path(directory)
  index = directory / "model_index.json"
  if not index.exists():
    hint = (" (it is one component of a pipeline: point at the folder above it)"
            if (directory / fmt.CONFIG_NAME).exists() else "")
    raise PipelineError(f"{directory} is not a diffusers pipeline: no model_index.json{hint}")
  name = json.loads(index.read_text()).get("_class_name")
  if name != PIPELINE_CLASS:
    raise PipelineError(f"{directory} holds a {name!r} pipeline, not {PIPELINE_CLASS} (Wan 2.1 "
                        "text-to-video)")
  missing = [c for c in COMPONENTS if not (directory / c).is_dir()]
  if missing:
    raise PipelineError(f"{directory} lacks the component folder(s) {missing}")
  return directory


class WanPipeline:
  """umT5 + Wan transformer + Wan VAE, loaded into a sharding plan, sampling jitted."""

  def __init__(self, directory: str | pathlib.Path, plan: sharding.ShardingPlan, *,
               dtype: Any = jnp.float32, attention_impl: str = "xla",
               max_sequence_length: int = text_lib.MAX_LENGTH):
    directory = check_pipeline_dir(directory)
    self.directory, self.plan, self.dtype = directory, plan, jnp.dtype(dtype)
    self.attention_impl = attention_impl
    self.scheduler = read_scheduler(directory)
    self.text_encoder = text_lib.WanTextEncoder.from_pipeline(
        directory, plan, dtype=dtype, max_length=max_sequence_length)
    self.transformer_config = weights.read_transformer_config(directory / "transformer")
    self.vae_config = weights.read_vae_config(directory / "vae")
    # A Wan-VideoJAM export (our `export` of a jam run) takes [video, motion] latents:
    # twice the VAE's channels. It samples with Inner-Guidance and decodes both.
    self.jam = self.transformer_config.in_channels == 2 * self.vae_config.z_dim
    self._wide_config = self.transformer_config
    if self.jam:
      self.transformer_config = dataclasses.replace(
          self.transformer_config, in_channels=self.vae_config.z_dim,
          out_channels=self.vae_config.z_dim)
    if self.transformer_config.in_channels != self.vae_config.z_dim:
      raise PipelineError(f"{directory}: the transformer takes {self.transformer_config.in_channels}"
                          f" channels, the VAE makes {self.vae_config.z_dim}")
    if self.transformer_config.text_dim != self.text_encoder.width:
      raise PipelineError(f"{directory}: the transformer reads {self.transformer_config.text_dim}-"
                          f"wide text, the text encoder writes {self.text_encoder.width}")
    vae_graphdef, vae_abstract = functional.abstract_split(
        lambda: vae_lib.WanVAE(self.vae_config, rngs=nnx.Rngs(0)), plan)
    self.vae_params = weights.load_vae(directory / "vae", vae_abstract)
    self._decode = jax.jit(lambda p, z: nnx.merge(vae_graphdef, p).decode(
        nnx.merge(vae_graphdef, p).denormalize(z)))
    self._transformer_params: Any = None
    self._models: dict[tuple[int, int, int], functional.FunctionalModel] = {}
    self._samplers: dict[tuple, Any] = {}

  def latent_shape(self, num_frames: int, height: int, width: int) -> dit.VideoShape:
    """The latent clip [T', h, w, z] of num_frames x height x width pixels."""
    ct, cs = self.vae_config.temporal_compression, self.vae_config.spatial_compression
    patch = self.transformer_config.patch_size
    step = cs * patch[1]
    if (num_frames - 1) % ct or num_frames < 1 or height % step or width % step:
      raise PipelineError(f"Wan generates 1 + {ct}k frames of a multiple of {step} pixels in "
                          f"height and width; asked for {num_frames} frames of {height}x{width}")
    return dit.VideoShape(1 + (num_frames - 1) // ct, height // cs, width // cs,
                          self.vae_config.z_dim)

  def _model(self, shape: dit.VideoShape) -> functional.FunctionalModel:
    key = shape.dims[:3]
    if key not in self._models:
      def create(rngs: nnx.Rngs) -> video_model.WanVideoModel:
        return video_model.WanVideoModel(self.transformer_config, video_shape=shape,
                                         text_encoder=None, dtype=self.dtype,
                                         attention_impl=self.attention_impl, jam=self.jam,
                                         rngs=rngs)
      graphdef, abstract = functional.abstract_split(lambda: create(nnx.Rngs(0)), self.plan)
      if self._transformer_params is None:   # the weights do not depend on the clip shape
        self._transformer_params = {"transformer": self._load_transformer(abstract["transformer"])}
      self._models[key] = functional.FunctionalModel(graphdef, abstract, shape, self.jam,
                                                     self.plan, create)
    return self._models[key]

  def _load_transformer(self, abstract: Any) -> Any:
    directory = self.directory / "transformer"
    if not self.jam:
      return weights.load_transformer(directory, self.transformer_config, abstract)
    # Wan-VideoJAM: read the 2C-channel tensors, split off the motion projections on
    # the host (a whole float32 copy of the model there, once), then place them.
    _, wide_abstract = functional.abstract_split(
        lambda: transformer_lib.WanTransformer(self._wide_config, rngs=nnx.Rngs(0)), self.plan)
    wide = jax.device_get(weights.load_transformer(directory, self._wide_config, wide_abstract))
    _, params = weights.jam_from_diffusers(self._wide_config, wide, self.vae_config.z_dim)
    return jax.tree.map(lambda a, t: jax.device_put(a, t.sharding), params, abstract)

  def _sampler(self, model: functional.FunctionalModel, settings: sampler_lib.SamplerSettings):
    key = (model.video_shape.dims, settings)
    if key not in self._samplers:
      def apply_fn(params, x, d_t, t, encoded_text, text_mask, text_keep):
        return model.apply(params, x, d_t, t, None, text_mask, text_keep,
                           encoded_text=encoded_text)

      def sample(params, noise, noise_motion, text, mask, negative, negative_mask, text_scale,
                 motion_scale):
        encoded = model.encode_text(params, text, mask)
        encoded_negative = model.encode_text(params, negative, negative_mask)
        return sampler_lib.sample_loop(
            apply_fn, params, noise, noise_motion, encoded, mask, settings, model.jam,
            (text_scale, motion_scale), null_text=(encoded_negative, negative_mask))
      self._samplers[key] = jax.jit(sample)
    return self._samplers[key]

  def sample_latents(self, prompts: Sequence[str], *, num_frames: int, height: int, width: int,
                     settings: sampler_lib.SamplerSettings, seed: int = 0,
                     negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                     noise: np.ndarray | None = None, noise_motion: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalised (video latents, motion latents or None) [B, T', h, w, z] for `prompts`,
    from `noise` (default: drawn from `seed`). `settings.guidance`: 'cfg' (against the
    negative prompt), 'none', or for a Wan-VideoJAM folder 'inner' (Inner-Guidance:
    prompt, negative prompt and null motion in one batched forward)."""
    settings = settings.validate(jam=self.jam)
    shape = self.latent_shape(num_frames, height, width)
    full = (len(prompts),) + shape.dims
    key_x, key_d = jax.random.split(jax.random.key(seed))
    for name, value in (("noise", noise), ("noise_motion", noise_motion)):
      if value is not None and tuple(value.shape) != full:
        raise PipelineError(f"{name} is {value.shape}, the request needs {full}")
    if noise is None:
      noise = jax.random.normal(key_x, full, jnp.float32)
    if self.jam and noise_motion is None:
      noise_motion = jax.random.normal(key_d, full, jnp.float32)
    model = self._model(shape)
    text, mask = self.text_encoder(list(prompts))
    negative, negative_mask = self.text_encoder([negative_prompt] * len(prompts))
    with self.plan.active():
      latents, motion = self._sampler(model, settings)(
          self._transformer_params, noise, noise_motion if self.jam else None, text, mask,
          negative, negative_mask, jnp.float32(settings.text_scale),
          jnp.float32(settings.motion_scale))
    motion = None if motion is None else np.asarray(jax.device_get(motion))
    return np.asarray(jax.device_get(latents)), motion

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Video [B, T, H, W, 3] in [-1, 1] of normalised latents (the motion latents of a
    Wan-VideoJAM model decode through the same VAE into the motion video)."""
    with self.plan.active():
      return np.asarray(jax.device_get(self._decode(self.vae_params, latents)))

  def generate(self, prompts: Sequence[str], **kwargs: Any
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(video [B, T, H, W, 3] in [-1, 1], motion video or None, video latents):
    `sample_latents`, then `decode` of both."""
    latents, motion = self.sample_latents(prompts, **kwargs)
    return self.decode(latents), None if motion is None else self.decode(motion), latents


def guidance_scale_to_text_scale(guidance_scale: float) -> float:
  """diffusers' guidance_scale g as our w1 = g - 1."""
  return float(guidance_scale) - 1.0


def settings_from_config(config: Any, scheduler: SchedulerDefaults | None, jam: bool = False
                         ) -> sampler_lib.SamplerSettings:
  """Sampler settings of a generation config (configs/wan21_generate.py); an empty
  schedule or a zero shift take the pipeline scheduler's; sample.guidance 'auto' is
  Inner-Guidance for a Wan-VideoJAM folder, else CFG (none at guidance_scale 1)."""
  sample = config.sample
  schedule, shift = sample.schedule, float(sample.flow_shift)
  if not schedule or shift <= 0:
    if scheduler is None:
      raise PipelineError("the pipeline has no scheduler/ of a kind we know "
                          f"({sorted(SCHEDULERS)}): set sample.schedule and sample.flow_shift")
    schedule, shift = schedule or scheduler.schedule, shift if shift > 0 else scheduler.shift
  guidance = sample.get("guidance", "auto")
  if guidance == "auto":
    guidance = "inner" if jam else ("cfg" if sample.guidance_scale != 1.0 else "none")
  return sampler_lib.SamplerSettings(
      num_steps=int(sample.num_steps), solver=sample.solver, time_shift=shift, schedule=schedule,
      guidance=guidance, text_scale=guidance_scale_to_text_scale(sample.guidance_scale),
      motion_scale=float(sample.get("motion_scale", 0.0)),
      inner_guidance_until=float(sample.get("inner_guidance_until",
                                            sampler_lib.ALWAYS_INNER_GUIDANCE)),
      batched=True).validate(jam=jam)


def generate_videos(config: Any, out_dir: str | pathlib.Path) -> list[str]:
  """Samples every prompt of a generation config and writes sample_XXX.mp4 per prompt
  plus samples.json into out_dir; returns the MP4 paths. Batches are logged as they go."""
  if not config.pipeline_dir:
    raise PipelineError("set config.pipeline_dir to a diffusers Wan 2.1 pipeline folder")
  if not config.prompts:
    raise PipelineError("config.prompts is empty")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  plan = sharding.ShardingPlan.from_config(ml_collections.ConfigDict(config.mesh.to_dict()))
  pipeline = WanPipeline(config.pipeline_dir, plan, dtype=config.dtype,
                         attention_impl=config.attention_impl,
                         max_sequence_length=config.max_sequence_length)
  settings = settings_from_config(config, pipeline.scheduler, pipeline.jam)
  prompts, batch = list(config.prompts), max(1, int(config.batch_size))
  paths, records = [], []
  for start in range(0, len(prompts), batch):
    chunk = prompts[start:start + batch]
    seed = int(config.seed) + start
    video, motion, _ = pipeline.generate(chunk, num_frames=config.num_frames,
                                         height=config.height, width=config.width,
                                         settings=settings, seed=seed,
                                         negative_prompt=config.negative_prompt)
    to_uint8 = lambda a: motion_encoding.to_uint8((a + 1.0) / 2.0)
    for i, (prompt, clip) in enumerate(zip(chunk, video)):
      path = out_dir / f"sample_{start + i:03d}.mp4"
      frames = (to_uint8(clip) if motion is None else
                video_io.side_by_side(to_uint8(clip), to_uint8(motion[i]), config.flow_sigma))
      video_io.write_video(path, frames, fps=config.fps, min_side=0)
      paths.append(str(path))
      records.append(dict(file=path.name, prompt=prompt, seed=seed, index_in_batch=i))
      preset = config.get("metrics_preset", "")
      if preset:   # on the video itself (and the decoded motion: how well they agree)
        records[-1]["metrics"] = motion_metrics.compute_all(
            to_uint8(clip), None if motion is None else to_uint8(motion[i]),
            sigma=config.flow_sigma, fps=config.fps, preset=preset)
    logging.info("generated %d / %d prompts", min(start + batch, len(prompts)), len(prompts))
  (out_dir / "samples.json").write_text(json.dumps(dict(
      pipeline_dir=str(config.pipeline_dir), negative_prompt=config.negative_prompt,
      num_frames=config.num_frames, height=config.height, width=config.width,
      settings=dataclasses.asdict(settings), wan_videojam=pipeline.jam, samples=records),
      indent=2) + "\n")
  return paths
