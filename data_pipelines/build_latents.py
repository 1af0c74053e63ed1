r"""Turns a clip dataset into Wan 2.1 VAE latent clips (video and motion) for latent training.

  python -m data_pipelines.build_latents --config configs/X.py \
      --config.data.latents.source_dir=/data/clips \
      --config.data.latents.vae=/path/to/Wan2.1-T2V-1.3B-Diffusers \
      --config.data.dataset_dir=/data/latents

The source is any dataset of the shared clip format (build_synthetic,
build_from_videos); its clips must have 1 + 4k frames of multiples of 8 pixels.
Rerunning with the dataset already there does nothing (and says so); rerunning an
interrupted build encodes only the chunks (data.latents.chunk_clips) it lacks. On a
multi-host slice run the same command on every host: each encodes its share of the
chunks, and process 0 writes the dataset. See data_pipelines/latent_clips.py for the
record format and metadata.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipelines import latent_clips
from videojam_jax.parallel import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.initialize(_CONFIG.value)   # jax.distributed on a multi-host job, before any JAX work
  latent_clips.build(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
