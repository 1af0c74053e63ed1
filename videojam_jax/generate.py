r"""Text to video with a Wan 2.1 diffusers pipeline folder, in JAX.

  python -m videojam_jax.generate --config configs/wan21_generate.py --workdir out/ \
      --config.pipeline_dir=/path/to/Wan2.1-T2V-1.3B-Diffusers --config.prompts='("...",)'

Writes one MP4 per prompt and samples.json (prompts, seeds, settings) into workdir.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from videojam_jax.parallel import runtime
from videojam_jax.sampling import wan_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Generation config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the MP4s and samples.json go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  runtime.initialize(config)
  for path in wan_pipeline.generate_videos(config, _WORKDIR.value):
    print(path)


if __name__ == "__main__":
  app.run(main)
