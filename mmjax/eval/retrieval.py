"""Cross-modal retrieval metrics: recall@K and rank statistics, both directions.

Queries are scored against the whole gallery in fixed-size chunks, so memory for
scores is at most `chunk_size x gallery` floats at a time, never N x M. Each
chunk is split over this process's devices (the gallery replicated on each),
and with several processes the chunks are shared out and the results gathered,
so every process returns the same numbers. Ranks are found by counting, not
sorting, so each chunk costs one matmul and two reductions.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.eval import gallery

__all__ = ["retrieval_ranks", "retrieval_metrics", "top_k", "format_table"]

_DIRECTIONS = gallery.DIRECTIONS


@jax.jit
def _rank_chunk(q, q_labels, gallery, gallery_labels):
  """Pessimistic rank of the best-matching gallery item for one chunk of queries.

  Args:
    q: [C, D] float32 queries, sharded over the scoring devices.
    q_labels: [C] int32; -1 marks padding (matches nothing).
    gallery: [G, D] float32, replicated.
    gallery_labels: [G] int32; gallery item g matches query q iff labels agree.

  Returns:
    [C] int32 ranks, 1-based. Padding rows get garbage and must be dropped.
  """
  scores = jnp.dot(
      q, gallery.T, precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32)  # [C, G]: the only large buffer.
  match = q_labels[:, None] == gallery_labels[None, :]
  # Matching scores come out of the same matmul as the rest, so an exact tie
  # between a match and a non-match in float32 is seen as one.
  best = jnp.max(jnp.where(match, scores, -jnp.inf), axis=1)
  beaten_or_tied = jnp.logical_and(~match, scores >= best[:, None])
  return 1 + jnp.sum(beaten_or_tied, axis=1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_chunk(q, gallery, *, k):
  """[C, D] x [G, D] -> the k best gallery scores [C, k] and indices [C, k]."""
  scores = jnp.dot(q, gallery.T, precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=jnp.float32)
  return jax.lax.top_k(scores, k)


def _scoring_mesh() -> Mesh:
  # This process's devices: each scores a slice of every query chunk against
  # the whole (replicated) gallery, so a chunk costs C / devices x G scores
  # per device. Processes take turns over the chunks.
  return Mesh(np.array(jax.local_devices()), ("queries",))


def _chunks(fn, queries: np.ndarray, extras: tuple, chunk_size: int, pad_extras) -> list:
  """Runs fn(query_chunk, *extra_chunks) over this process's share of chunks.

  queries [Q, D] and each extra [Q, ...] are split in chunks of `chunk_size`
  rows (rounded up to a multiple of the device count; the last one padded),
  each sharded over the scoring devices. Returns, on every process, the host
  results of all chunks in order, gathered across processes.
  """
  mesh = _scoring_mesh()
  rows = NamedSharding(mesh, P("queries"))
  n = queries.shape[0]
  chunk = -(-min(chunk_size, n) // mesh.size) * mesh.size
  starts = list(range(0, n, chunk))
  total = len(starts)
  # Every process runs the same number of chunks (padding ones past the end
  # where needed): the gather below is a collective all of them must join.
  while len(starts) % jax.process_count():
    starts.append(n)
  mine = starts[jax.process_index()::jax.process_count()]
  out = []
  for start in mine:
    parts = [queries[start:start + chunk], *(e[start:start + chunk] for e in extras)]
    pad = chunk - parts[0].shape[0]
    if pad:  # one compiled program for every chunk, the last one included
      parts = [np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=v)
               for x, v in zip(parts, (0, *pad_extras))]
    out.append(jax.device_get(fn(*(jax.device_put(x, rows) for x in parts))))
  if jax.process_count() > 1:
    out = _gather_chunks(out, len(starts))[:total]
  return out


def _gather_chunks(mine: list, total: int) -> list:
  """Chunk results of every process, back in chunk order (process p did p::P).

  total is a multiple of the process count, so every process holds
  total / count results of the same shapes."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  count = jax.process_count()
  leaves, treedef = jax.tree.flatten(mine[0])
  stacked = [np.stack([jax.tree.leaves(m)[i] for m in mine]) for i in range(len(leaves))]
  gathered = multihost_utils.process_allgather(stacked)  # [processes, chunks, ...]
  out = []
  for c in range(total):
    p, j = c % count, c // count
    out.append(jax.tree.unflatten(treedef, [g[p][j] for g in gathered]))
  return out


def _chunked_ranks(queries, query_labels, gallery, gallery_labels, chunk_size):
  mesh = _scoring_mesh()
  replicated = NamedSharding(mesh, P())
  gallery = jax.device_put(np.asarray(gallery), replicated)
  gallery_labels = jax.device_put(np.asarray(gallery_labels), replicated)
  n = queries.shape[0]
  parts = _chunks(lambda q, l: _rank_chunk(q, l, gallery, gallery_labels),
                  np.asarray(queries), (np.asarray(query_labels),), chunk_size,
                  pad_extras=(-1,))
  return np.concatenate(parts)[:n].astype(np.int64)


def top_k(queries, gallery, k: int, *, chunk_size: int = 1024):
  """Exact top-k gallery items for every query, by dot product in float32.

  Scored chunk by chunk like the ranks (never Q x G scores at once). Equal
  scores are ordered by gallery index (lower first), as `jax.lax.top_k` does.

  Args:
    queries: [Q, D] float. gallery: [G, D] float. k: 1 <= k <= G.

  Returns:
    (scores [Q, k] float32, indices [Q, k] int32), best first.
  """
  q = np.asarray(_as_float32(queries, "queries"))
  g = _as_float32(gallery, "gallery")
  if not 1 <= k <= g.shape[0]:
    raise ValueError(f"k={k} must be in [1, {g.shape[0]}] (the gallery size).")
  if q.shape[0] == 0:
    raise ValueError("top_k needs at least one query.")
  mesh = _scoring_mesh()
  g = jax.device_put(g, NamedSharding(mesh, P()))
  parts = _chunks(lambda c: _top_k_chunk(c, g, k=k), q, (), chunk_size, ())
  scores = np.concatenate([s for s, _ in parts])[:q.shape[0]]
  indices = np.concatenate([i for _, i in parts])[:q.shape[0]]
  return scores, indices.astype(np.int32)


def _as_float32(x: Any, name: str) -> jax.Array:
  if not hasattr(x, "dtype"):
    x = np.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"{name} must be a float array, got dtype {x.dtype}; cast it to float32.")
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [num, D], got shape {tuple(x.shape)}.")
  return jnp.asarray(x, dtype=jnp.float32)


def _validate_text_to_image(text_to_image: Any, num_images: int,
                            num_texts: int) -> np.ndarray:
  t2i = np.asarray(text_to_image)
  if t2i.ndim != 1 or t2i.shape[0] != num_texts:
    raise ValueError(
        f"text_to_image must be 1-D of length M={num_texts} (one image index per "
        f"caption), got shape {t2i.shape}.")
  if not (np.issubdtype(t2i.dtype, np.integer) and t2i.dtype != np.bool_):
    raise ValueError(
        f"text_to_image must hold integer image indices, got dtype {t2i.dtype}.")
  bad = (t2i < 0) | (t2i >= num_images)
  if bad.any():
    j = int(np.argmax(bad))
    raise ValueError(
        f"text_to_image[{j}] = {int(t2i[j])} is out of range: image indices must "
        f"be in [0, N) with N={num_images} images ({int(bad.sum())} bad entries).")
  uncaptioned = np.flatnonzero(np.bincount(t2i, minlength=num_images) == 0)
  if uncaptioned.size:
    shown = ", ".join(str(i) for i in uncaptioned[:10])
    more = f", ... ({uncaptioned.size} in all)" if uncaptioned.size > 10 else ""
    raise ValueError(
        f"image(s) {shown}{more} have no caption in text_to_image, so "
        "image-to-text retrieval is undefined for them; drop those images from "
        "image_emb (and re-index text_to_image) or add their captions.")
  return t2i.astype(np.int32)


def retrieval_ranks(image_emb, text_emb, text_to_image, *,
                    chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """1-based retrieval ranks in both directions.

  Similarity is the dot product, computed in float32 (pass L2-normalised
  embeddings for cosine similarity). Queries are scored in chunks of
  `chunk_size`: at most `chunk_size x gallery` scores are in memory at a time,
  never the full N x M matrix. The last chunk is padded so that one compiled
  program serves every chunk of a given shape.

  Ties are resolved pessimistically: rank = 1 + the number of non-matching
  gallery items whose score is >= the best matching score. A model that scores
  everything equally therefore gets the worst rank, never a lucky one. Ranks are
  exact (found by counting, not by sorting).

  Args:
    image_emb: [N, D] float, numpy or jax.
    text_emb: [M, D] float, numpy or jax.
    text_to_image: [M] int in [0, N), the image of each caption. An image may
      have several captions; every image must have at least one.
    chunk_size: queries scored per step.

  Returns:
    i2t_ranks: [N] int. For each image, the rank among all M captions of its
      best-ranked caption.
    t2i_ranks: [M] int. For each caption, the rank of its image among all N.

  Raises:
    ValueError: on empty inputs, mismatched D, a malformed or out-of-range
      text_to_image, an image without captions, or NaN/Inf in an embedding.
  """
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
  img = _as_float32(image_emb, "image_emb")
  txt = _as_float32(text_emb, "text_emb")
  n, m = img.shape[0], txt.shape[0]
  if n == 0 or m == 0:
    raise ValueError(
        f"retrieval needs at least one image and one caption, got N={n} images "
        f"and M={m} captions.")
  if img.shape[1] != txt.shape[1]:
    raise ValueError(
        f"embedding sizes differ: image_emb has D={img.shape[1]}, text_emb has "
        f"D={txt.shape[1]}; both towers must project to the same dimension.")
  t2i = _validate_text_to_image(text_to_image, n, m)
  for name, x in (("image_emb", img), ("text_emb", txt)):
    if not bool(jnp.isfinite(x).all()):
      raise ValueError(
          f"{name} contains NaN or Inf (after casting to float32); check the "
          "model for divergence or the normalisation for zero vectors.")

  image_ids = np.arange(n, dtype=np.int32)
  i2t_ranks = _chunked_ranks(img, image_ids, txt, t2i, int(chunk_size))
  t2i_ranks = _chunked_ranks(txt, t2i, img, image_ids, int(chunk_size))
  return i2t_ranks, t2i_ranks


def retrieval_metrics(image_emb, text_emb, text_to_image, *,
                      ks: Sequence[int] | None = None,
                      chunk_size: int = 1024, warn: bool = True) -> dict[str, float]:
  """Recall@K and mean/median rank for image->text and text->image retrieval.

  Image-to-text counts a hit at K when any caption of the image is in the top K;
  text-to-image when the caption's image is. Ties are pessimistic (see
  `retrieval_ranks`): rank = 1 + number of non-matching gallery items scoring
  >= the best match. Scored in chunks of `chunk_size` queries, never N x M
  scores in memory at once.

  A small gallery is legitimate: with the default ks, an R@K whose gallery
  holds fewer than K items (1 by construction) is left out of the result, and
  `gallery.warn_left_out` names it once. K passed explicitly must fit: the caller
  asked for that number.

  Args:
    image_emb: [N, D] float (L2-normalised; similarity is the dot product).
    text_emb: [M, D] float.
    text_to_image: [M] int in [0, N); several captions may share an image.
    ks: the K of each recall@K; None: DEFAULT_KS (1, 5, 10), each reported
      where it fits. Given K must each be <= the gallery of both directions
      (M captions, N images).
    chunk_size: queries scored per step.
    warn: print the left-out keys (callers that rename the keys print their own).

  Returns:
    {"image_to_text_R@K", "text_to_image_R@K" for K in ks (fractions in [0, 1];
     with default ks, only K <= the direction's gallery: see `gallery.left_out`),
     "image_to_text_mean_rank", "image_to_text_median_rank",
     "text_to_image_mean_rank", "text_to_image_median_rank" (1-based)}, all
    Python floats.

  Raises:
    ValueError: see `retrieval_ranks`; also for a K < 1, or a K given in ks
      that is larger than a gallery.
  """
  explicit = ks is not None
  ks = tuple(ks) if explicit else gallery.DEFAULT_KS
  for k in ks:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"each K in ks must be a positive int, got {k!r}.")
  # Shape checks are cheap; do them before any device work so a bad K fails fast.
  n, m = (np.shape(x)[0] if np.ndim(x) else 0 for x in (image_emb, text_emb))
  for k in ks if explicit else ():
    for direction, noun, size in (("image_to_text", "captions", m),
                                  ("text_to_image", "images", n)):
      if size > 0 and k > size:
        raise ValueError(
            f"K={k} in ks is larger than the {direction} gallery ({size} "
            f"{noun}): R@{k} would be 1 by construction; drop K={k} from ks "
            "or evaluate on a larger set.")

  ranks = retrieval_ranks(image_emb, text_emb, text_to_image,
                          chunk_size=chunk_size)
  skipped = gallery.left_out(n, m, ks)
  if warn:
    gallery.warn_left_out(skipped)
  metrics = {}
  for direction, r in zip(_DIRECTIONS, ranks):
    for k in ks:
      if f"{direction}_R@{k}" not in skipped:
        metrics[f"{direction}_R@{k}"] = float(np.mean(r <= k))
    metrics[f"{direction}_mean_rank"] = float(np.mean(r))
    metrics[f"{direction}_median_rank"] = float(np.median(r))
  return metrics


def format_table(metrics: dict[str, float],
                 labels: tuple[str, str] = ("image->text", "text->image")) -> str:
  """Renders `retrieval_metrics` output as an aligned text table for printing.

  One row per direction (named by `labels`); columns R@K for each K present
  in either direction (ascending), then mean_rank and median_rank. A K one
  direction left out (its gallery is smaller than K: see `gallery.left_out`) shows
  "-" there. Extra keys (e.g. `step`) are ignored.
  """
  ks = sorted({int(key[len(d) + 3:]) for d in _DIRECTIONS for key in metrics
               if key.startswith(f"{d}_R@")})

  def recall(direction, k):
    value = metrics.get(f"{direction}_R@{k}")
    return "-" if value is None else f"{value:.4f}"

  header = ["", *(f"R@{k}" for k in ks), "mean_rank", "median_rank"]
  rows = [header]
  for direction, label in zip(_DIRECTIONS, labels):
    rows.append([
        label,
        *(recall(direction, k) for k in ks),
        f"{metrics[f'{direction}_mean_rank']:.2f}",
        f"{metrics[f'{direction}_median_rank']:.1f}",
    ])
  widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
  lines = [
      "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths)))
      for row in rows
  ]
  return "\n".join(lines)
