"""Captions -> model text inputs: the one path for training and sampling.

Two sources (config.model.text.source):
- "builtin": UTF-8 bytes as token ids for the model's own byte-level encoder
  (no vocabulary file to download): BOS, then byte b as token b + 2, padded.
- "precomputed": token embeddings a real text encoder (T5, CLIP, ...) wrote once
  into an .npz of `captions` [N] (str), `embeddings` [N, L, D] and `masks` [N, L].

`CaptionInputs` turns a list of captions into (text, mask) for either source. The
input pipeline calls it per clip, the sampler per batch of prompts (trimmed to the
longest caption: padding is masked out of every attention, so dropping padding
columns changes nothing but cost).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

PAD_ID = 0
BOS_ID = 1
BYTE_OFFSET = 2          # byte b is token b + 2
VOCAB_SIZE = 256 + BYTE_OFFSET
# Trimmed prompt lengths are rounded up to this, so a sampler compiles for few lengths.
PROMPT_LENGTH_MULTIPLE = 16


def tokenize(captions: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Captions -> (token ids int32 [B, L], mask bool [B, L]); BOS first, truncated at L."""
  ids = np.full((len(captions), max_length), PAD_ID, np.int32)
  for i, caption in enumerate(captions):
    data = caption.encode("utf-8")[: max_length - 1]
    ids[i, 0] = BOS_ID
    ids[i, 1:1 + len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + BYTE_OFFSET
  return ids, ids != PAD_ID


class PrecomputedText:
  """Caption -> precomputed (embedding [L, D], mask [L]) from an .npz file."""

  def __init__(self, path: str, max_length: int, embedding_dim: int):
    if not path or not os.path.exists(path):
      raise FileNotFoundError(f"data.text_embeddings={path!r} not found (needed by "
                              "model.text.source='precomputed')")
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in ("captions", "embeddings", "masks") if k not in f.files]
      if missing:
        raise ValueError(f"{path}: lacks {missing} (needs captions, embeddings, masks)")
      captions, self._embeddings, self._masks = f["captions"], f["embeddings"], f["masks"]
    if self._embeddings.shape[1:] != (max_length, embedding_dim):
      raise ValueError(f"{path}: embeddings are {self._embeddings.shape[1:]}, config wants "
                       f"({max_length}, {embedding_dim})")
    masks = self._masks.astype(bool)
    prefix = np.arange(max_length)[None] < masks.sum(axis=1, keepdims=True)
    if not np.array_equal(masks, prefix):
      bad = int(np.argmax(np.any(masks != prefix, axis=1)))
      raise ValueError(f"{path}: masks[{bad}] is not a prefix (valid tokens first, padding "
                       "after), which the attention kernels assume")
    self.path = path
    self._index = {str(c): i for i, c in enumerate(captions)}

  def __contains__(self, caption: str) -> bool:
    return caption in self._index

  def __call__(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    if caption not in self._index:
      raise KeyError(f"{self.path} has no precomputed text embedding for caption {caption!r}")
    i = self._index[caption]
    return self._embeddings[i].astype(np.float32), self._masks[i].astype(bool)


class CaptionInputs:
  """Captions -> (text [B, L] ids or [B, L, D] embeddings, mask bool [B, L])."""

  def __init__(self, text_config: ml_collections.ConfigDict, embeddings_path: str | None = ""):
    """text_config: config.model.text; embeddings_path: config.data.text_embeddings
    (None: shapes only, for ahead-of-time compiles; calling then raises)."""
    if text_config.source not in ("builtin", "precomputed"):
      raise ValueError(f"model.text.source must be 'builtin' or 'precomputed', "
                       f"got {text_config.source!r}")
    self.source = text_config.source
    self.max_length = int(text_config.max_length)
    self.embedding_dim = int(text_config.embedding_dim)
    self._lookup = None
    # embeddings_path "": the records carry their captions' embeddings (latent clips
    # built with data.latents.text_encoder); `from_embedding` reads those.
    if self.source == "precomputed" and embeddings_path:
      self._lookup = PrecomputedText(embeddings_path, self.max_length, self.embedding_dim)

  @property
  def has_lookup(self) -> bool:
    """Whether captions can be turned into inputs here (else only records' embeddings)."""
    return self.source == "builtin" or self._lookup is not None

  def from_embedding(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A record's caption embedding [n, D] (its n tokens) -> (text [L, D], mask [L]),
    zero-padded to max_length L."""
    embedding = np.asarray(embedding, np.float32)
    if self.source != "precomputed":
      raise ValueError("the records carry caption embeddings; set model.text.source="
                       "'precomputed' to train on them")
    if embedding.ndim != 2 or embedding.shape[1] != self.embedding_dim:
      raise ValueError(f"a record's caption embedding is {embedding.shape}, model.text."
                       f"embedding_dim is {self.embedding_dim}")
    n = embedding.shape[0]
    if n > self.max_length:
      raise ValueError(f"a record's caption has {n} tokens, more than model.text.max_length="
                       f"{self.max_length}")
    text = np.zeros((self.max_length, self.embedding_dim), np.float32)
    text[:n] = embedding
    return text, np.arange(self.max_length) < n

  def __call__(self, captions: Sequence[str], *, trim: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """The model inputs of `captions`; `trim` drops padding columns past the longest
    caption (rounded up to PROMPT_LENGTH_MULTIPLE), for sampling."""
    if self.source == "builtin":
      text, mask = tokenize(captions, self.max_length)
    elif self._lookup is None:
      raise ValueError("caption embeddings were not loaded: set data.text_embeddings (the "
                       ".npz of `python -m data_pipelines.embed_captions`) to embed captions "
                       "outside the records")
    else:
      pairs = [self._lookup(c) for c in captions]
      text = np.stack([p[0] for p in pairs])
      mask = np.stack([p[1] for p in pairs])
    if trim:
      longest = int(mask.sum(axis=1).max()) if len(captions) else 1
      length = min(self.max_length,
                   -(-longest // PROMPT_LENGTH_MULTIPLE) * PROMPT_LENGTH_MULTIPLE)
      text, mask = text[:, :length], mask[:, :length]
    return text, mask

  def spec(self, batch: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of (text, mask) for `batch` captions of full length."""
    length = self.max_length
    if self.source == "precomputed":
      text = jax.ShapeDtypeStruct((batch, length, self.embedding_dim), np.float32)
    else:
      text = jax.ShapeDtypeStruct((batch, length), np.int32)
    return text, jax.ShapeDtypeStruct((batch, length), np.bool_)
