"""Zero-shot classification: images scored against prompt-ensembled class embeddings.

A class is embedded as CLIP does it: every prompt of the class ("a photo of a
{}." filled with its name, ...) is encoded, the unit embeddings are averaged
and the mean is normalised again. An image is assigned the class of highest
cosine similarity.

The shapes dataset's tasks (shape, colour, relation) are defined beside it,
in mmjax/data/shapes_zeroshot.py.
"""

from typing import Callable, Sequence

import numpy as np

from mmjax.eval.evaluators import batched


# --- text side ---------------------------------------------------------------

def prompt_embeddings(encode_text: Callable, tokenizer, prompts: Sequence[Sequence[str]],
                      context_length: int, batch_size: int) -> np.ndarray:
  """Ensemble embedding of each class from its own list of prompts.

  Each distinct prompt is encoded once (batches of `batch_size`, the last one
  padded, so a jitted encoder compiles once); a class's unit embeddings are
  averaged and the mean re-normalised.

  Args:
    encode_text: int32 [B, L] tokens -> [B, D] embeddings (normalised again here).
    tokenizer: has `encode(texts, length) -> int32 [N, length]`.
    prompts: C lists of prompt strings, one list per class (lengths may differ).
    context_length: token length L of each prompt.
    batch_size: prompts encoded per call.

  Returns:
    float32 [C, D] unit-norm class embeddings.
  """
  prompts = [list(p) for p in prompts]
  if not prompts:
    raise ValueError("no classes to embed: pass at least one list of prompts.")
  for c, p in enumerate(prompts):
    if not p or isinstance(p, str):
      raise ValueError(f"class {c} has no prompts ({p!r}); give each class a "
                       "non-empty list of prompt strings.")
  unique = list(dict.fromkeys(t for p in prompts for t in p))
  row = {t: i for i, t in enumerate(unique)}
  tokens = tokenizer.encode(unique, context_length)
  emb = batched(encode_text, tokens, batch_size).astype(np.float64)
  emb = _unit(emb, "the text encoder's prompt embeddings")
  means = np.stack([emb[[row[t] for t in p]].mean(axis=0) for p in prompts])
  norms = np.linalg.norm(means, axis=-1)
  if not (norms > 1e-6).all():
    c = int(np.argmin(norms))
    raise ValueError(f"the prompts of class {c} average to a zero vector, so the "
                     "class has no direction; use prompts that agree in meaning.")
  return (means / norms[:, None]).astype(np.float32)


def class_embeddings(encode_text: Callable, tokenizer, class_names: Sequence[str],
                     templates: Sequence[str], context_length: int,
                     batch_size: int) -> np.ndarray:
  """[C, D] unit class embeddings: each template filled with each class name, averaged.

  Args:
    encode_text: int32 [B, L] tokens -> [B, D] embeddings.
    tokenizer: has `encode(texts, length)`.
    class_names: C names; class c's prompts are `t.format(class_names[c])`.
    templates: T strings, each with one "{}" slot, e.g. "a photo of a {}.".
    context_length, batch_size: as in `prompt_embeddings`.
  """
  if not templates or isinstance(templates, str):
    raise ValueError(f"templates={templates!r}; give a sequence of strings with a "
                     "'{}' slot for the class name, e.g. ('a photo of a {}.',).")
  for t in templates:
    if t.count("{}") != 1:
      raise ValueError(f"template {t!r} needs exactly one '{{}}' slot for the class "
                       "name (write literal braces as '{{' and '}}').")
  return prompt_embeddings(encode_text, tokenizer,
                           [[t.format(name) for t in templates] for name in class_names],
                           context_length, batch_size)


def _unit(x: np.ndarray, what: str) -> np.ndarray:
  if not np.isfinite(x).all():
    raise ValueError(f"{what} contain NaN or Inf; check the model for divergence.")
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  if not (norms > 0).all():
    raise ValueError(f"{what} contain a zero vector, which has no direction.")
  return x / norms


# --- scoring -----------------------------------------------------------------

def _float_array(x, name: str, ndims: tuple) -> np.ndarray:
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must be a float array, got dtype {x.dtype}.")
  if x.ndim not in ndims:
    raise ValueError(f"{name} must be {' or '.join(f'{n}-D' for n in ndims)}, got "
                     f"shape {x.shape}.")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contains NaN or Inf (at {int((~np.isfinite(x)).sum())} "
                     "entries); check the model for divergence or the normalisation "
                     "for zero vectors.")
  return x


def classify(image_emb, class_emb, labels, *, ks: Sequence[int] = (1, 5),
             class_names: Sequence[str] | None = None,
             chunk_size: int = 4096) -> dict:
  """Top-K accuracy, per-class accuracy and confusion matrix of zero-shot predictions.

  The score of class c for image i is the dot product of their embeddings
  (pass unit vectors for cosine similarity), in float64. Ties are
  pessimistic, as in retrieval: an image's rank is 1 + the number of wrong
  classes scoring >= its true class, and among classes tied for the best score
  the prediction is a wrong one (the lowest-index), so a model that scores
  every class equally gets 0 top-1, never a lucky 1 / C. Images are scored
  `chunk_size` at a time.

  Args:
    image_emb: [N, D] float.
    class_emb: [C, D] float, shared by all images, or [N, C, D] when each image
      has its own candidates (the prompts name its objects). C >= 2.
    labels: [N] int in [0, C), the true class of each image.
    ks: the K of each top-K accuracy. Only K < C are reported: top-C is 1 by
      construction (with C = 4 relations, (1, 5) gives top1 alone).
    class_names: C names keying `per_class` (default: 0 .. C-1).
    chunk_size: images scored per step.

  Returns:
    {"top{K}": float for each K in ks with K < C,
     "per_class": {name: float} accuracy of each class present in labels
       (classes with no image are left out, not reported as 0 or NaN),
     "mean_per_class": float, the mean of per_class (balanced accuracy),
     "confusion": int64 [C, C], row = true class, column = predicted class,
     "num_images": int N}.

  Raises:
    ValueError: on empty inputs, fewer than 2 classes, mismatched shapes, NaN
      or Inf in an embedding, or labels that are not ints in [0, C).
  """
  for k in ks:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"each K in ks must be a positive int, got {k!r}.")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
  img, cls = np.asarray(image_emb), np.asarray(class_emb)
  if img.size == 0 or cls.size == 0:
    raise ValueError(f"zero-shot classification needs at least one image and two "
                     f"classes, got image_emb {img.shape} and class_emb {cls.shape}.")
  img = _float_array(img, "image_emb", (2,))
  cls = _float_array(cls, "class_emb", (2, 3))
  n, c = img.shape[0], cls.shape[-2]
  if c < 2:
    raise ValueError(f"class_emb holds C={c} class; with one class there is nothing "
                     "to choose, so give at least two.")
  if cls.shape[-1] != img.shape[1]:
    raise ValueError(f"embedding sizes differ: image_emb has D={img.shape[1]}, "
                     f"class_emb has D={cls.shape[-1]}.")
  per_image = cls.ndim == 3
  if per_image and cls.shape[0] != n:
    raise ValueError(f"per-image class_emb [N, C, D] has N={cls.shape[0]} but "
                     f"image_emb has N={n}; give one candidate set per image.")
  y = np.asarray(labels)
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
    raise ValueError(f"labels must be int [N={n}], one class index per image, got "
                     f"shape {y.shape} and dtype {y.dtype}.")
  bad = (y < 0) | (y >= c)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"labels[{i}] = {int(y[i])} is out of range: class indices must "
                     f"be in [0, C) with C={c} classes ({int(bad.sum())} bad labels).")
  names = list(range(c)) if class_names is None else list(class_names)
  if len(names) != c:
    raise ValueError(f"{len(names)} class_names for C={c} classes in class_emb.")

  ranks, preds = np.empty(n, np.int64), np.empty(n, np.int64)
  for start in range(0, n, chunk_size):
    rows = slice(start, start + chunk_size)
    q = img[rows].astype(np.float64)
    w = cls[rows] if per_image else cls
    # float64: products of float32 inputs are exact, so scores that are equal in
    # exact arithmetic (e.g. duplicate classes) come out equal and count as ties.
    scores = (np.einsum("nd,ncd->nc", q, w.astype(np.float64)) if per_image
              else q @ w.astype(np.float64).T)  # [n, C]
    label = y[rows]
    true = scores[np.arange(len(label)), label]
    others = np.where(np.arange(c)[None, :] == label[:, None], -np.inf, scores)
    ranks[rows] = 1 + np.sum(others >= true[:, None], axis=1)
    # Correct only when strictly best; argmax takes the lowest-index tied wrong class.
    preds[rows] = np.where(ranks[rows] == 1, label, np.argmax(others, axis=1))

  confusion = np.zeros((c, c), np.int64)
  np.add.at(confusion, (y, preds), 1)
  counts = confusion.sum(axis=1)
  per_class = {names[i]: float(confusion[i, i] / counts[i]) for i in range(c) if counts[i]}
  out = {f"top{k}": float(np.mean(ranks <= k)) for k in sorted(set(ks)) if k < c}
  out.update(per_class=per_class, mean_per_class=float(np.mean(list(per_class.values()))),
             confusion=confusion, num_images=n)
  return out
