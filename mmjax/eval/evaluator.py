"""Embeds an evaluation split with the model and scores retrieval on it."""

import functools

import jax
import numpy as np

from mmjax.eval import retrieval


@functools.partial(jax.jit, static_argnums=(0,))
def _embed_images(model, params, images):
  return model.apply({"params": params}, images, method=model.encode_image)


@functools.partial(jax.jit, static_argnums=(0,))
def _embed_texts(model, params, tokens):
  return model.apply({"params": params}, tokens, method=model.encode_text)


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
  """Applies fn to fixed-size batches of x (the last padded), so it compiles once."""
  n = len(x)
  out = []
  for start in range(0, n, batch_size):
    chunk = x[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(fn(chunk))[:batch_size - pad])
  return np.concatenate(out)


def embed(model, params, data: dict, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """data: {"image": [N, H, W, C], "text": [M, L]} -> ([N, D], [M, D]) float32."""
  img = _batched(lambda x: _embed_images(model, params, x), data["image"], batch_size)
  txt = _batched(lambda x: _embed_texts(model, params, x), data["text"], batch_size)
  return img, txt


def evaluate(model, params, data: dict, batch_size: int) -> dict[str, float]:
  """Retrieval metrics (the contract's keys) of the model on `data`."""
  img, txt = embed(model, params, data, batch_size)
  return retrieval.retrieval_metrics(img, txt, data["text_to_image"])
