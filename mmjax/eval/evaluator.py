"""Embeds an evaluation split with the model and scores retrieval on it."""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.eval import retrieval


@functools.lru_cache(maxsize=16)
def _encoder(model, method: str, sharding):
  """jit of model.<method>(params, x), its output laid out as `sharding`."""
  def encode(params, x):
    return model.apply({"params": params}, x, method=getattr(model, method))

  return jax.jit(encode) if sharding is None else jax.jit(encode, out_shardings=sharding)


def replicated_like(params):
  """Replicated on the params' mesh when they are sharded there, else None.

  Evaluation batches are small next to training batches, so inputs and
  embeddings are replicated; the params stay however training sharded them
  (over fsdp / tensor) and XLA gathers what each matmul needs.
  """
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return NamedSharding(sharding.mesh, P())
  return None


def batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
  """Applies fn to fixed-size batches of x (the last padded), so it compiles once."""
  n = len(x)
  batch_size = min(batch_size, n)  # a split smaller than one batch: no padding
  out = []
  for start in range(0, n, batch_size):
    chunk = x[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(fn(chunk))[:batch_size - pad])
  return np.concatenate(out)


def encode_fn(model, params, method: str):
  """x -> model.<method>(x) with `params` bound: "encode_image" maps uint8
  [B, H, W, 3] to [B, D], "encode_text" int32 [B, L] to [B, D].

  params may be sharded over a mesh (as the train step leaves them); inputs
  and outputs are then replicated on it.
  """
  sharding = replicated_like(params)
  put = (lambda x: x) if sharding is None else (lambda x: jax.device_put(x, sharding))
  fn = _encoder(model, method, sharding)
  return lambda x: fn(params, put(x))


def embed(model, params, data: dict, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """data: {"image": [N, H, W, C], "text": [M, L]} -> ([N, D], [M, D]) float32."""
  img = batched(encode_fn(model, params, "encode_image"), data["image"], batch_size)
  txt = batched(encode_fn(model, params, "encode_text"), data["text"], batch_size)
  return img, txt


def evaluate(model, params, data: dict, batch_size: int) -> dict[str, float]:
  """Retrieval metrics (the contract's keys) of the model on `data`."""
  img, txt = embed(model, params, data, batch_size)
  return retrieval.retrieval_metrics(img, txt, data["text_to_image"])
