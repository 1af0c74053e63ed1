"""A dataset's captions through Wan 2.1's umT5 into the .npz that model.text.source =
"precomputed" reads (the command: data_pipelines/embed_captions.py)."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from videojam_jax.data import pipeline
from videojam_jax.data import text as text_lib
from videojam_jax.model.wan import text as wan_text
from videojam_jax.parallel import sharding


def dataset_captions(data_config: ml_collections.ConfigDict) -> list[str]:
  """The distinct captions of the train and eval splits, sorted."""
  captions = set()
  for split in (data_config.train_split, data_config.eval_split):
    captions.update(pipeline.read_captions(data_config.dataset_dir, split, 10 ** 9))
  return sorted(captions)


def embed_captions(config: ml_collections.ConfigDict, batch_size: int = 8) -> str:
  """Writes config.data.text_embeddings from config.data.text_encoder; returns its path."""
  from tqdm import tqdm
  text_config, out = config.model.text, config.data.text_embeddings
  if not config.data.text_encoder:
    raise ValueError("set config.data.text_encoder to a Wan 2.1 diffusers pipeline folder")
  if not out:
    raise ValueError("set config.data.text_embeddings to the .npz to write")
  if text_config.source != "precomputed":
    raise ValueError(f"model.text.source is {text_config.source!r}: embeddings are only read "
                     "with 'precomputed'")
  captions = dataset_captions(config.data)
  if os.path.exists(out):
    try:
      existing = text_lib.PrecomputedText(out, text_config.max_length, text_config.embedding_dim)
      if all(c in existing for c in captions):
        print(f"{out} already holds all {len(captions)} captions: nothing to do")
        return out
    except (ValueError, OSError) as e:
      print(f"{out} will be rewritten: {e}")
  plan = sharding.ShardingPlan.from_config(config.mesh)
  encoder = wan_text.WanTextEncoder.from_pipeline(config.data.text_encoder, plan,
                                                  max_length=text_config.max_length)
  if encoder.width != text_config.embedding_dim:
    raise ValueError(f"the text encoder writes {encoder.width}-wide embeddings, "
                     f"model.text.embedding_dim is {text_config.embedding_dim}")
  embeddings = np.zeros((len(captions), text_config.max_length, encoder.width), np.float32)
  masks = np.zeros((len(captions), text_config.max_length), bool)
  for start in tqdm(range(0, len(captions), batch_size), desc="umT5", unit="batch"):
    chunk = captions[start:start + batch_size]
    # Constant batch shape: the last batch padded with empty captions (one compile).
    emb, mask = encoder(chunk + [""] * (batch_size - len(chunk)))
    embeddings[start:start + len(chunk)], masks[start:start + len(chunk)] = (
        emb[:len(chunk)], mask[:len(chunk)])
  tmp = out + ".tmp.npz"
  np.savez(tmp, captions=np.asarray(captions), embeddings=embeddings, masks=masks)
  os.replace(tmp, out)
  truncated = int(np.sum(masks[:, -1]))
  print(f"Wrote {out}: {len(captions)} captions x {text_config.max_length} tokens x "
        f"{encoder.width}" + (f"; {truncated} reach max_length (truncated)" if truncated else ""))
  return out
