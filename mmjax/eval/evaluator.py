"""Embeds an evaluation split with the model and scores retrieval on it: the
test split, or (shapes) its images captioned in held-out phrasings."""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.data import pipeline, shapes_heldout
from mmjax.eval import retrieval

# Metric names of `heldout`: retrieval_metrics' keys under this prefix.
HELDOUT = "heldout/"


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


def heldout_data(config, tokenizer) -> dict:
  """The first config.eval.num_images shapes test images (all when -1), with
  captions in phrasings training never uses (shapes_heldout.heldout_split), tokenized
  to config.data.context_length.

  Returns {"image": uint8 [N, S, S, 3], "text": int32 [M, L], "text_to_image":
  int32 [M], "captions": M str, "truncated": float, the fraction of captions
  longer than L tokens (cut at L, so the model reads them only in part)}.
  """
  if config.data.name != "shapes":
    raise ValueError(f"config.data.name={config.data.name!r}: held-out phrasings exist "
                     "for the shapes dataset only; remove eval.evaluators.heldout.")
  split = shapes_heldout.heldout_split(image_size=config.data.image_size,
                               num_images=pipeline.TEST_IMAGES)
  n = config.eval.num_images
  n = len(split["image"]) if n == -1 else min(n, len(split["image"]))
  keep = split["text_to_image"] < n
  captions = [c for c, k in zip(split["captions"], keep) if k]
  length = config.data.context_length
  # Longer rows than the model reads: a row with more than L tokens was cut.
  longer = tokenizer.encode(captions, length + 8)
  return {"image": np.asarray(split["image"][:n]),
          "text": tokenizer.encode(captions, length),
          "text_to_image": np.asarray(split["text_to_image"][keep], np.int32),
          "captions": captions,
          "truncated": float(np.mean((longer != tokenizer.pad_id).sum(1) > length))}


def heldout(model, params, tokenizer, config, image_emb=None) -> dict[str, float]:
  """Retrieval on the shapes test images captioned in held-out phrasings.

  image_emb: [N, D] embeddings of the same first N test images when already
    computed (by the retrieval evaluator), else they are embedded here.

  Returns retrieval_metrics' keys under "heldout/" (e.g.
  "heldout/image_to_text_R@1"), and "heldout/truncated" (see heldout_data).
  """
  data = heldout_data(config, tokenizer)
  if image_emb is None:
    image_emb = batched(encode_fn(model, params, "encode_image"), data["image"],
                        config.eval.batch_size)
  text_emb = batched(encode_fn(model, params, "encode_text"), data["text"],
                     config.eval.batch_size)
  metrics = retrieval.retrieval_metrics(image_emb, text_emb, data["text_to_image"])
  out = {HELDOUT + k: v for k, v in metrics.items()}
  out[HELDOUT + "truncated"] = data["truncated"]
  return out
