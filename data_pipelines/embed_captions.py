r"""Embeds a dataset's captions with Wan 2.1's umT5, for model.text.source = "precomputed".

  python -m data_pipelines.embed_captions --config configs/X.py \
      --config.data.text_encoder=/path/to/Wan2.1-T2V-1.3B-Diffusers \
      --config.data.text_embeddings=/path/to/captions_umt5.npz

Reads every caption of the train and eval splits of config.data.dataset_dir (the
sampler's prompts come from there too), encodes them in batches as Wan's pipeline
does (videojam_jax/model/wan/text.py) at config.model.text.max_length tokens, and
writes the .npz the trainer reads (captions [N], embeddings [N, L, D] float32,
masks [N, L]). Written to a temporary file and renamed, so an interrupted run
leaves no partial file; rerunning with a complete file there does nothing.
"""

from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipelines import caption_embeddings

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Captions per encoder call.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  caption_embeddings.embed_captions(_CONFIG.value, _BATCH_SIZE.value)


if __name__ == "__main__":
  app.run(main)
