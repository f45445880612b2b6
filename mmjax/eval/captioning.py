"""Captioning: generate a caption for every test image and score it against
the image's references (BLEU-1..4, ROUGE-L, CIDEr-D; METEOR where Java is).

  config.eval.evaluators.captioning = dict(kind="captioning", every=0,
                                           method="beam", beam_size=3)

Metrics, under "captioning/": the scores of mmjax.eval.caption_metrics, the
mean generated length in words, the number of empty captions and of
references longer than data.context_length (truncated for training, and
longer than anything the decoder can write). report() draws a grid of images
with generated and reference captions (captions_grid.png) and writes the
captions as COCO results JSON (captions.json, captions.references.json).

Generation is one jitted call per batch of images (mmjax.models.generate),
the batch sharded over the mesh's data axes like a training batch.
"""

import logging
import re

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax import paths
from mmjax.eval import caption_export, caption_grid, caption_metrics
from mmjax.eval import evaluators as evaluators_lib
from mmjax.eval.evaluators import EvaluatorConfigError
from mmjax.models import generate

PREFIX = "captioning/"


def coco_image_ids(ids) -> np.ndarray:
  """Test-split image ids ([N] str) -> [N] int for COCO results JSON: each
  id's trailing number when those are unique (COCO's own ids, shapes_test_i),
  else the position in the split."""
  numbers = [re.search(r"(\d+)\D*$", str(i)) for i in ids]
  if all(numbers):
    out = np.asarray([int(m.group(1)) for m in numbers], np.int64)
    if len(set(out.tolist())) == len(out):
      return out
  return np.arange(len(ids), dtype=np.int64)


def references_of(test: dict, tokenizer) -> list[list[str]]:
  """Each test image's reference captions (the raw strings where the split
  keeps them, else the decoded token rows)."""
  captions = test.get("captions")
  if captions is None:
    captions = tokenizer.decode(test["text"])
  refs = [[] for _ in range(len(test["image"]))]
  for caption, owner in zip(captions, np.asarray(test["text_to_image"])):
    refs[int(owner)].append(str(caption))
  return refs


def batch_sharding(params):
  """NamedSharding over the data axes of the params' mesh, or None (one device)."""
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return NamedSharding(sharding.mesh, P(("data", "fsdp")))
  return None


class Captioning:
  """Captions the test images with decoder head `head` and scores them.

  Args (config.eval.evaluators.<id>, besides kind and every):
    head: the caption decoder head (config.model.heads.<head>).
    source: the modality it captions (its decoder's `source`).
    method: "greedy", "beam" or "sample" (mmjax.models.generate).
    beam_size, alpha: beam width and GNMT length penalty (beam).
    temperature, top_k: sampling.
    max_length, min_length: caption length bounds in tokens, EOS included
      (max_length None: the decoder's context length).
    tokenizer: "simple" (no Java) or "ptb" (the COCO server's, needs Java).
    meteor: also METEOR (needs Java).
    grid: images in the report's grid.
  """

  def __init__(self, context, head="caption", source="image", method="greedy", beam_size=3,
               alpha=0.0, temperature=1.0, top_k=0, max_length=None, min_length=0,
               tokenizer="simple", meteor=False, grid=16):
    if method not in generate.METHODS:
      raise EvaluatorConfigError(f"captioning method={method!r}; choose one of "
                                 f"{generate.METHODS}.")
    vocab = getattr(context.tokenizer, "vocab_size", None)
    if vocab is not None:
      try:
        generate.check_options(method, vocab, beam_size, top_k,
                               max_length or context.context_length, min_length)
      except ValueError as e:
        raise EvaluatorConfigError(f"captioning evaluator: {e}") from None
    if tokenizer not in caption_metrics.TOKENIZERS:
      raise EvaluatorConfigError(f"captioning tokenizer={tokenizer!r}; choose one of "
                                 f"{caption_metrics.TOKENIZERS}.")
    self.context, self.head, self.source = context, head, source
    self.modalities = (source,)
    self.options = dict(method=method, beam_size=beam_size, alpha=alpha,
                        temperature=temperature, top_k=top_k, max_length=max_length,
                        min_length=min_length)
    self.scoring = dict(tokenizer=tokenizer, meteor=meteor)
    self.grid = grid
    self.last = None  # {"image_ids", "captions", "references"} of the last call

  def generate(self, encoders, inputs) -> np.ndarray:
    """inputs [N, ...] of the source field -> token ids [N, L] int32."""
    model, params = encoders.model, encoders.params
    if self.head not in (getattr(model, "heads", None) or {}):
      raise EvaluatorConfigError(
          f"the captioning evaluator generates with head {self.head!r}, but the model has "
          f"no such decoder (heads: {sorted(model.heads)}); add config.model.heads."
          f"{self.head} = dict(kind='caption_decoder', ...) and a captioning loss term, or "
          "remove the evaluator.")
    options = self.options
    sharding = batch_sharding(params)
    # Outputs replicated: every process reads the whole result (several hosts).
    out = None if sharding is None else NamedSharding(sharding.mesh, P())
    fn = evaluators_lib.jitted_once(
        ("captioner", model, self.head, tuple(sorted(options.items())), out),
        lambda: jax.jit(generate.captioner(model, self.head, **options), out_shardings=out))
    shards = 1 if sharding is None else int(np.prod(
        [sharding.mesh.shape[a] for a in ("data", "fsdp")]))
    put = (lambda a: a) if sharding is None else (lambda a: jax.device_put(a, sharding))
    rng = jax.random.key(self.context.seed)
    return evaluators_lib.batched(lambda c: fn(params, put(c), rng), np.asarray(inputs),
                                  encoders.batch_size, multiple_of=shards)

  def __call__(self, encoders) -> dict[str, float]:
    test, tok = self.context.test, self.context.tokenizer
    field = self.context.inputs.get(self.source, self.source)
    ids = self.generate(encoders, test[field])
    captions = tok.decode(ids)
    references = references_of(test, tok)
    image_ids = coco_image_ids(test["image_ids"])
    self.last = {"image_ids": image_ids, "captions": captions, "references": references,
                 "images": test.get("image")}
    scores = caption_metrics.score(
        {int(i): c for i, c in zip(image_ids, captions)},
        {int(i): r for i, r in zip(image_ids, references)}, **self.scoring)
    out = {PREFIX + k: float(v) for k, v in scores.items()
           if k not in ("num_images", "num_empty_predictions")}
    out[PREFIX + "num_empty"] = float(sum(not c.strip() for c in captions))
    out[PREFIX + "mean_words"] = float(np.mean([len(c.split()) for c in captions]))
    out[PREFIX + "truncated_references"] = float(self._truncated(test, tok))
    return out

  def _truncated(self, test, tok) -> int:
    """References with more tokens (EOS included) than data.context_length:
    the tokenizer cut them for training, and no generated caption can be as
    long. Counted and logged, not an error."""
    captions = test.get("captions")
    if captions is None:
      return 0
    length = self.context.context_length
    full = tok.encode([str(c) for c in captions], 4 * length + 8)
    count = int(np.sum(np.sum(full != tok.pad_id, axis=1) > length))
    if count:
      logging.warning("captioning: %d of %d reference captions are longer than "
                      "data.context_length=%d tokens (EOS included) and were truncated; "
                      "raise data.context_length to keep them whole.", count, len(captions),
                      length)
    return count

  def export(self, path: str) -> str:
    """Writes the last call's captions as COCO results JSON at `path` and the
    references beside it (mmjax.eval.caption_export)."""
    if self.last is None:
      raise RuntimeError("export() before the evaluator has run.")
    last = self.last
    caption_export.write_coco_results(
        path, [int(i) for i in last["image_ids"]], last["captions"],
        {int(i): r for i, r in zip(last["image_ids"], last["references"])})
    return path

  def report(self, workdir: str) -> list[str]:
    """captions_grid.png and captions.json (+ .references.json) in workdir."""
    if self.last is None or jax.process_index() != 0:
      return []
    written = [self.export(paths.join(workdir, "captions.json"))]
    images = self.last["images"]
    if images is not None and np.asarray(images).ndim == 4:
      n = min(self.grid, len(images))
      written.append(caption_grid.plot_caption_grid(
          np.asarray(images[:n]), self.last["captions"][:n], self.last["references"][:n],
          paths.join(workdir, "captions_grid.png"), max_images=n))
    return written
