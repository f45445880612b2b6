"""Scoring captions by a decoder's likelihood (as CapPa evaluates): retrieval
re-ranked by log p(caption | image), and zero-shot classification by the
likelihood of class prompts, each next to the embedding's answer on the same
queries.

  config.eval.evaluators.likelihood = dict(kind="caption_likelihood", every=-1,
                                           rerank_k=10, normalize="sum")

The score of (image i, caption j) is log p(caption j | image i): the sum over
the caption's real tokens (EOS included, padding not) of the teacher-forced
decoder's log-probabilities, or with normalize="mean" that sum per token.
Scoring all N x M pairs takes N x M decoder passes (5 million on the shapes
test split), so retrieval re-ranks: each query's `rerank_k` best candidates
by embedding similarity are rescored by the decoder and put in its order; the
rest keep the embedding's. Text-to-image compares images under one caption,
where "sum" and "mean" rank alike; image-to-text compares captions of
different lengths, where "sum" favours the short ones.

Metrics, under "likelihood/":
  image_to_text_R@K, text_to_image_R@K (K = 1, 5, where the gallery holds K),
    and their mean and median ranks: after re-ranking; a query whose match is
    not among its rerank_k candidates keeps its embedding rank (> rerank_k).
  embedding_image_to_text_R@K, embedding_text_to_image_R@K: the embedding's
    alone, on the same queries (mmjax.eval.retrieval's ranks: these are the
    retrieval evaluator's numbers).
  image_to_text_recall_in_top_k, text_to_image_recall_in_top_k: the fraction
    of queries with a match among its candidates (the embedding's R@rerank_k,
    ties pessimistic), the best R@1 re-ranking can reach.
  zeroshot/<task>_top1, embedding_zeroshot/<task>_top1 (shapes, tasks=True):
    the tasks of mmjax.data.shapes_zeroshot, scored by likelihood and by
    embedding on the same prompts (see `class_prompts`).

Decoder calls are one jitted function of fixed shapes: the source tower's
tokens are computed once per image and gathered per pair, with the caption
rows, into batches of eval.batch_size pairs, split over the mesh's data axes
as a training batch is. The cost is a decoder pass per distinct pair: at most
(N + M) x rerank_k for retrieval (60,000 on the shapes test split at
rerank_k=10), and for the tasks 112 per one-object image (6 shapes and 8
colours, MAX_TEMPLATES prompts each) and 8 per two-object image.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.eval import retrieval
from mmjax.eval.captioning import batch_sharding
from mmjax.eval.evaluators import EvaluatorConfigError, batched
from mmjax.models import registry

PREFIX = "likelihood/"
NORMALIZE = ("sum", "mean")
KS = (1, 5)
# Prompts per class for zero-shot by likelihood: the shapes templates number
# over a hundred per class, each a decoder pass per image.
MAX_TEMPLATES = 8


# --- the score ---------------------------------------------------------------------

def caption_log_likelihood(logits, captions, pad_id: int, normalize: str = "sum"):
  """log p(caption | source) from teacher-forced logits.

  Args:
    logits: [B, L, V] float, the decoder's logits at each position.
    captions: [B, L] int, the caption ids (EOS included), then pad_id.
    pad_id: padding, not a token of the caption.
    normalize: "sum" of the real tokens' log-probabilities, or their "mean".

  Returns:
    [B] float32.
  """
  logp = -optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits, jnp.float32), captions)  # [B, L]
  weights = (captions != pad_id).astype(jnp.float32)
  total = jnp.sum(logp * weights, axis=-1)
  if normalize == "mean":
    total = total / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
  return total


def decoder_spec(model, head: str, source: str) -> dict:
  """The spec of decoder head `head` of `model`; EvaluatorConfigError naming
  the fix when the model has none (or one over another modality)."""
  heads = dict(getattr(model, "heads", None) or {})
  spec = dict(heads.get(head) or {})
  cls = registry.head_class(spec.get("kind"), head) if head in heads else None
  if not hasattr(cls, "decode"):
    found = "no such head" if cls is None else f"a {getattr(cls, '__name__', cls)}"
    raise EvaluatorConfigError(
        f"generation/likelihood asked of a model with no decoder head {head!r} ({found}; "
        f"heads: {sorted(heads)}); add config.model.heads.{head} = "
        f"dict(kind='caption_decoder', source={source!r}, ...) and a captioning loss term "
        "(mmjax.losses.captioning.term), or set the evaluator's head to the decoder's name.")
  if spec.get("source", "image") != source:
    raise EvaluatorConfigError(
        f"decoder head {head!r} reads {spec.get('source', 'image')!r} tokens, but the "
        f"evaluator scores captions of {source!r}; set its source to "
        f"{spec.get('source', 'image')!r}.")
  return spec


def scorer(model, head: str, normalize: str):
  """A function (params, source_tokens [B, P, W], captions [B, L] int) -> [B]
  float32 log p(caption | source) by decoder head `head`, for `jax.jit`."""
  pad_id = dict(model.heads[head]).get("pad_id", 0)

  def score(params, source_tokens, captions):
    logits = model.apply({"params": params}, head, "decode", source_tokens, captions,
                         method=model.head)
    return caption_log_likelihood(logits, captions, pad_id, normalize)

  return score


@functools.lru_cache(maxsize=16)
def _jitted_scorer(model, head: str, normalize: str):
  # Cached here on its own hashable arguments: an evaluator that runs every
  # eval_every steps traces and compiles once.
  return jax.jit(scorer(model, head, normalize))


def pair_scores(model, params, head: str, source_tokens, captions, image_index,
                caption_index, *, normalize: str = "sum", batch_size: int = 256) -> np.ndarray:
  """log p(captions[caption_index[q]] | source_tokens[image_index[q]]) for every q.

  Args:
    model, params: a MultiTower with decoder head `head`, and its params.
    source_tokens: [N, P, W] the source tower's tokens (Encoders.features).
    captions: [M, L] int token rows.
    image_index, caption_index: [Q] int, the pairs.
    normalize: "sum" or "mean" (caption_log_likelihood).
    batch_size: pairs per decoder call; every call has this many rows (the
      last padded), so one compiled function serves every call.

  Returns:
    [Q] float32.
  """
  fn = _jitted_scorer(model, head, normalize)
  sharding = batch_sharding(params)
  shards = 1 if sharding is None else int(np.prod(
      [sharding.mesh.shape[a] for a in ("data", "fsdp")]))
  put = (lambda a: a) if sharding is None else (lambda a: jax.device_put(a, sharding))
  source_tokens, captions = np.asarray(source_tokens), np.asarray(captions)
  index = np.stack([np.asarray(image_index), np.asarray(caption_index)], axis=1)
  q = len(index)
  if not q:
    return np.zeros((0,), np.float32)
  size = -(-batch_size // shards) * shards
  if q < size:  # a full batch even so: the same shapes as every other call
    index = np.concatenate([index, np.repeat(index[-1:], size - q, axis=0)])
  out = batched(
      lambda c: fn(params, put(source_tokens[c[:, 0]]), put(captions[c[:, 1]])), index,
      size, multiple_of=shards)[:q]
  if not np.isfinite(out).all():
    raise FloatingPointError(f"caption log-likelihoods of decoder head {head!r} hold "
                             f"{int((~np.isfinite(out)).sum())} NaN or Inf; check the model "
                             "for divergence.")
  return out


# --- retrieval -----------------------------------------------------------------------

def reranked_ranks(scores, correct, embedding_ranks) -> np.ndarray:
  """Ranks after re-ranking each query's candidates by score.

  Args:
    scores: [Q, k] float, the candidates' likelihood scores.
    correct: [Q, k] bool, which candidates match the query.
    embedding_ranks: [Q] int, 1-based pessimistic ranks by embedding
      (mmjax.eval.retrieval.retrieval_ranks).

  Returns:
    [Q] int, 1-based: where the embedding ranks a match within the top k,
    1 + the wrong candidates scoring >= the best match (ties pessimistic, as
    in mmjax.eval.retrieval); elsewhere the embedding rank (> k). A match tied
    with a wrong item at the k-th place may be among the candidates (top_k
    breaks ties by index) but counts as outside them, as it does in the
    embedding's R@k: so rerank_k=1 gives the embedding's R@1 exactly.
  """
  found = embedding_ranks <= scores.shape[1]
  best = np.max(np.where(correct, scores, -np.inf), axis=1)
  within = 1 + np.sum(~correct & (scores >= best[:, None]), axis=1)
  return np.where(found, within, embedding_ranks).astype(np.int64)


def _recalls(name: str, ranks, gallery: int) -> dict[str, float]:
  """{"<name>_R@K"} of [Q] ranks, for the K in KS that the gallery holds."""
  return {f"{name}_R@{k}": float(np.mean(ranks <= k)) for k in KS if k <= gallery}


def rerank_retrieval(zimg, ztxt, text_to_image, score, rerank_k: int) -> dict[str, float]:
  """Retrieval both ways, re-ranked by `score` among the embedding's top rerank_k.

  Args:
    zimg: [N, D], ztxt: [M, D] unit embeddings; text_to_image: [M] int.
    score: (image_index [Q], caption_index [Q]) -> [Q] float, higher better.
      Each distinct pair is scored once, whichever direction asks for it.
    rerank_k: candidates per query (at most the gallery).

  Returns:
    The retrieval metrics of the module docstring, without the prefix.
  """
  t2i = np.asarray(text_to_image)
  n, m = len(zimg), len(ztxt)
  emb_i2t, emb_t2i = retrieval.retrieval_ranks(zimg, ztxt, t2i)
  k_i2t, k_t2i = min(rerank_k, m), min(rerank_k, n)
  _, cand_i2t = retrieval.top_k(zimg, ztxt, k_i2t)  # [N, k] caption ids
  _, cand_t2i = retrieval.top_k(ztxt, zimg, k_t2i)  # [M, k] image ids
  images = np.concatenate([np.repeat(np.arange(n), k_i2t), cand_t2i.ravel()])
  texts = np.concatenate([cand_i2t.ravel(), np.repeat(np.arange(m), k_t2i)])
  unique, inverse = np.unique(images.astype(np.int64) * m + texts, return_inverse=True)
  scores = np.asarray(score(unique // m, unique % m))[inverse.ravel()]
  directions = {
      "image_to_text": (scores[:n * k_i2t].reshape(n, k_i2t),
                        t2i[cand_i2t] == np.arange(n)[:, None], emb_i2t, m),
      "text_to_image": (scores[n * k_i2t:].reshape(m, k_t2i),
                        cand_t2i == t2i[:, None], emb_t2i, n),
  }
  out = {}
  for direction, (s, correct, emb, gallery) in directions.items():
    ranks = reranked_ranks(s, correct, emb)
    out.update(_recalls(direction, ranks, gallery))
    out[f"{direction}_mean_rank"] = float(np.mean(ranks))
    out[f"{direction}_median_rank"] = float(np.median(ranks))
    out.update(_recalls(f"embedding_{direction}", emb, gallery))
    out[f"{direction}_recall_in_top_k"] = float(np.mean(emb <= s.shape[1]))
  return out


# --- zero-shot on shapes ------------------------------------------------------------

def template_subset(templates, limit: int = MAX_TEMPLATES) -> tuple:
  """At most `limit` of the templates, evenly spaced from the first to the
  last: deterministic, and, as the shapes templates run over size, then the
  other attribute, then position, spread over all three."""
  templates = tuple(templates)
  if len(templates) <= limit:
    return templates
  index = np.unique(np.round(np.linspace(0, len(templates) - 1, limit)).astype(int))
  return tuple(templates[i] for i in index)


def class_prompts(task) -> list:
  """[n][C][T] prompts of a shapes_zeroshot Task: for a templated task (shape,
  colour) template_subset of its templates filled with each class name, the
  same for every image; else each image's own candidates (relation: two
  phrasings of each of the four facts)."""
  if task.image_prompts is None:
    chosen = template_subset(task.templates)
    shared = [[t.format(name) for t in chosen] for name in task.class_names]
    return [shared] * len(task.image_index)
  return [[list(p) for p in candidates] for candidates in task.image_prompts]


def top1(class_scores, labels) -> float:
  """Accuracy of the best-scoring class, [n, C] scores and [n] labels; ties
  pessimistic (the true class must beat every other), as zeroshot.classify."""
  class_scores, labels = np.asarray(class_scores), np.asarray(labels)
  rows = np.arange(len(labels))
  true = class_scores[rows, labels]
  others = class_scores.copy()
  others[rows, labels] = -np.inf
  return float(np.mean(true > others.max(axis=1)))


def zeroshot_tasks(tasks, zimg, encode_text, tokenizer, context_length: int,
                   batch_size: int, score) -> dict[str, float]:
  """Top-1 of each shapes task by likelihood and by embedding, on the same prompts.

  A class scores log mean_t p(prompt_t | image) over its T prompts (the
  log-sum-exp minus log T): the likelihood of the class when its phrasing is
  drawn uniformly from its prompts. A mean of log-probabilities would instead
  punish a class for its least likely phrasing.

  Args:
    tasks: {name: shapes_zeroshot.Task}.
    zimg: [N, D] unit image embeddings of the images the tasks index.
    encode_text: int32 [B, L] -> [B, D]; tokenizer: has encode(texts, length).
    score: (image_index [Q], captions [U, L], caption_index [Q]) -> [Q] float.

  Returns:
    {"zeroshot/<task>_top1", "embedding_zeroshot/<task>_top1"}, no prefix.
  """
  from mmjax.eval import zeroshot  # pylint: disable=g-import-not-at-top
  out = {}
  for task in tasks.values():
    if not len(task.image_index):
      continue
    prompts = class_prompts(task)
    n, c, t = len(prompts), len(task.class_names), len(prompts[0][0])
    flat = [p for image in prompts for cls in image for p in cls]
    if len(flat) != n * c * t:
      raise ValueError(f"zero-shot task {task.name!r}: every class needs the same number "
                       "of prompts.")
    unique = list(dict.fromkeys(flat))
    row = {p: i for i, p in enumerate(unique)}
    tokens = tokenizer.encode(unique, context_length)
    scores = np.asarray(score(np.repeat(task.image_index, c * t), tokens,
                              np.asarray([row[p] for p in flat])), np.float64)
    class_scores = np.logaddexp.reduce(scores.reshape(n, c, t), axis=-1) - np.log(t)
    out[f"zeroshot/{task.name}_top1"] = top1(class_scores, task.labels)
    if task.image_prompts is None:
      cls = zeroshot.prompt_embeddings(encode_text, tokenizer, prompts[0], context_length,
                                       batch_size)
    else:
      cls = zeroshot.prompt_embeddings(encode_text, tokenizer,
                                       [p for image in prompts for p in image],
                                       context_length, batch_size).reshape(n, c, -1)
    result = zeroshot.classify(zimg[task.image_index], cls, task.labels,
                               class_names=task.class_names)
    out[f"embedding_zeroshot/{task.name}_top1"] = result["top1"]
  return out


# --- the evaluator ---------------------------------------------------------------------

class CaptionLikelihood:
  """Retrieval and zero-shot by a caption decoder's likelihood (module docstring).

  Args (config.eval.evaluators.<id>, besides kind and every):
    head: the caption decoder head (config.model.heads.<head>).
    source: the modality it reads (its decoder's `source`).
    rerank_k: candidates per query rescored by the decoder.
    normalize: "sum" of the token log-probabilities, or "mean" per token.
    tasks: also the zero-shot tasks, on the shapes data (elsewhere there are
      none, and this is ignored).
  """

  def __init__(self, context, head: str = "caption", source: str = "image",
               rerank_k: int = 10, normalize: str = "sum", tasks: bool = True):
    if normalize not in NORMALIZE:
      raise EvaluatorConfigError(f"caption_likelihood normalize={normalize!r}; choose one "
                                 f"of {NORMALIZE}.")
    if isinstance(rerank_k, bool) or not isinstance(rerank_k, int) or rerank_k < 1:
      raise EvaluatorConfigError(f"caption_likelihood rerank_k={rerank_k!r} must be an "
                                 "integer >= 1 (the candidates per query the decoder "
                                 "rescores).")
    if source == "text":
      raise EvaluatorConfigError("caption_likelihood source='text' would score captions "
                                 "given captions; name the modality the decoder reads.")
    self.context, self.head, self.source = context, head, source
    self.rerank_k, self.normalize = rerank_k, normalize
    self.tasks = bool(tasks) and context.data_name == "shapes"
    self.modalities = (source, "text")

  def __call__(self, encoders) -> dict[str, float]:
    model, params = encoders.model, encoders.params
    decoder_spec(model, self.head, self.source)
    c, test = self.context, self.context.test
    images = test[c.inputs.get(self.source, self.source)]
    texts = test[c.inputs.get("text", "text")]
    memory = encoders.features(self.source, images)["tokens"]
    zimg = encoders.encode(self.source, images)
    score = functools.partial(pair_scores, model, params, self.head, memory,
                              normalize=self.normalize, batch_size=encoders.batch_size)
    out = rerank_retrieval(zimg, encoders.encode("text", texts), test["text_to_image"],
                           lambda i, j: score(texts, i, j), self.rerank_k)
    if self.tasks:
      out.update(self._zeroshot(encoders, zimg, score))
    return {PREFIX + k: v for k, v in out.items()}

  def _zeroshot(self, encoders, zimg, score) -> dict[str, float]:
    # The shapes modules are imported only where the data is shapes.
    from mmjax.data import shapes, shapes_zeroshot  # pylint: disable=g-import-not-at-top
    from mmjax.data.shapes_evaluators import TEST_IMAGES  # pylint: disable=g-import-not-at-top
    c = self.context
    scenes = shapes.test_split(image_size=c.image_size,
                               num_images=TEST_IMAGES)["scenes"]
    tasks = shapes_zeroshot.shapes_tasks(scenes[:len(zimg)])
    return zeroshot_tasks(tasks, zimg, lambda x: encoders.encode("text", x), c.tokenizer,
                          c.context_length, c.batch_size,
                          lambda i, captions, j: score(captions, i, j))
