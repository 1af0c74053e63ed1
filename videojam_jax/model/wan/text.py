"""Prompts -> Wan 2.1's text embeddings: the umT5 tokenizer and encoder, as WanPipeline does.

`WanTextEncoder.from_pipeline(dir)` reads a diffusers Wan pipeline's tokenizer/
(tokenizer.json, read by Hugging Face `tokenizers`, the library transformers'
fast tokenizer wraps) and text_encoder/ (umT5 safetensors), and turns prompts
into (embeddings [B, L, 4096], mask [B, L]) the way the reference pipeline does:

- the prompt cleaned (HTML entities unescaped twice, whitespace collapsed;
  the reference also runs `ftfy` when it is installed, we do not: it only
  repairs mis-decoded Unicode),
- tokenized with EOS appended, truncated and padded to max_length (512 in Wan),
- encoded with the padding masked out of attention,
- each row's outputs past its length set to zero.
"""

from __future__ import annotations

import html
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videojam_jax.model import diffusers_format as fmt
from videojam_jax.model import functional
from videojam_jax.model.wan import umt5 as umt5_lib
from videojam_jax.model.wan import weights
from videojam_jax.parallel import sharding

TOKENIZER_FILE = "tokenizer.json"
MAX_LENGTH = 512      # Wan's max_sequence_length (the published pipelines' default)


def clean_prompt(prompt: str) -> str:
  """The reference's prompt_clean, without ftfy: HTML entities unescaped (twice, as there),
  runs of whitespace collapsed to one space, stripped."""
  return re.sub(r"\s+", " ", html.unescape(html.unescape(prompt)).strip()).strip()


class Tokenizer:
  """umT5's tokenizer from a tokenizer.json: ids with EOS, truncated and padded."""

  def __init__(self, directory: str | os.PathLike):
    from tokenizers import Tokenizer as HFTokenizer   # only prompt encoding needs it
    path = pathlib.Path(directory) / TOKENIZER_FILE
    if not path.exists():
      raise fmt.CheckpointError(f"{directory} has no {TOKENIZER_FILE} (a Wan pipeline's "
                                "tokenizer/ folder holds one)")
    try:
      self._tokenizer = HFTokenizer.from_file(str(path))
    except Exception as e:   # tokenizers raises plain Exceptions for malformed files
      raise fmt.CheckpointError(f"{path} cannot be read as a tokenizer: {e}") from e
    self.pad_id = self._tokenizer.token_to_id("<pad>")
    self.eos_id = self._tokenizer.token_to_id("</s>")
    if self.pad_id is None or self.eos_id is None:
      raise fmt.CheckpointError(f"{path} lacks umT5's <pad> or </s> token")
    self._tokenizer.no_padding()
    self._tokenizer.no_truncation()

  def __call__(self, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, max_length], mask bool [B, max_length]) of the cleaned prompts."""
    ids = np.full((len(prompts), max_length), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), max_length), bool)
    for row, prompt in enumerate(prompts):
      # add_special_tokens=False: EOS goes on after truncating, as transformers does
      # (a sequence cut to max_length keeps its EOS).
      tokens = self._tokenizer.encode(clean_prompt(prompt), add_special_tokens=False).ids
      tokens = tokens[: max_length - 1] + [self.eos_id]
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = True
    return ids, mask


class WanTextEncoder:
  """Prompts -> (embeddings float32 [B, L, d_model], mask bool [B, L]), jitted on the
  plan's devices (the encoder's weights placed by their logical axis names)."""

  def __init__(self, tokenizer: Tokenizer, config: umt5_lib.UMT5Config, graphdef: Any,
               params: Any, plan: sharding.ShardingPlan, max_length: int = MAX_LENGTH):
    self.tokenizer, self.config, self.plan, self.graphdef = tokenizer, config, plan, graphdef
    self.params, self.max_length = params, int(max_length)

    def encode(params, ids, mask):
      hidden = nnx.merge(graphdef, params)(ids, mask)
      return jnp.where(mask[..., None], hidden.astype(jnp.float32), 0.0)

    self._encode = jax.jit(encode)

  @classmethod
  def from_pipeline(cls, directory: str | os.PathLike, plan: sharding.ShardingPlan, *,
                    dtype: Any = jnp.float32, max_length: int = MAX_LENGTH) -> "WanTextEncoder":
    """From a Wan pipeline folder (its tokenizer/ and text_encoder/)."""
    directory = pathlib.Path(directory)
    for sub in ("tokenizer", "text_encoder"):
      if not (directory / sub).is_dir():
        raise fmt.CheckpointError(f"{directory} has no {sub}/ folder: point at a diffusers Wan "
                                  "pipeline (e.g. Wan2.1-T2V-1.3B-Diffusers)")
    tokenizer = Tokenizer(directory / "tokenizer")
    config = weights.read_umt5_config(directory / "text_encoder")
    graphdef, abstract = functional.abstract_split(
        lambda: umt5_lib.UMT5Encoder(config, dtype=dtype, rngs=nnx.Rngs(0)), plan)
    params = weights.load_umt5(directory / "text_encoder", abstract)
    return cls(tokenizer, config, graphdef, params, plan, max_length)

  @property
  def width(self) -> int:
    return self.config.d_model

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.tokenizer(prompts, self.max_length)
    with self.plan.active():
      embeddings = self._encode(self.params, ids, mask)
    return np.asarray(jax.device_get(embeddings)), mask
