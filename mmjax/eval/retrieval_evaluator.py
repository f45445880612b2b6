"""Cross-modal retrieval between any two modalities of the test split."""


import jax
import numpy as np

from mmjax import paths
from mmjax.eval import gallery, reports, retrieval
from mmjax.eval.evaluators import EvaluatorConfigError

# Test-split fields with several rows per image, and the key of their image index.
GROUPED = {"text": "text_to_image"}


def rename(metrics: dict, a: str, b: str) -> dict:
  """retrieval_metrics' keys for the pair (a, b): image_to_text_* -> <a>_to_<b>_*,
  text_to_image_* -> <b>_to_<a>_*."""
  out = {}
  for key, value in metrics.items():
    for old, new in (("image_to_text_", f"{a}_to_{b}_"), ("text_to_image_", f"{b}_to_{a}_")):
      if key.startswith(old):  # by prefix: a new name may contain an old one
        key = new + key[len(old):]
        break
    out[key] = value
  return out


# What each modality's gallery holds, for the warning about a small one.
_NOUNS = {"image": "images", "text": "captions"}


def _noun(modality: str) -> str:
  return _NOUNS.get(modality, f"{modality} items")


def left_out(a: str, b: str, num_a: int, num_b: int | None) -> dict[str, str]:
  """gallery.left_out for the pair (a, b) scored as (image, text): a's N = num_a
  items query b's M = num_b (None: not counted yet) and back; keys renamed as
  `rename` does."""
  left = gallery.left_out(num_a, num_b, gallery.DEFAULT_KS, nouns=(_noun(b), _noun(a)))
  return rename(left, a, b)


def warn_small_gallery(left: dict[str, str], n: int, size: int, num_images: int) -> None:
  """At construction, before anything compiles: the R@K a small test split
  leaves out (`left`, see gallery.left_out), those it reports, and over
  what: the first n of the split's `size` images (num_images:
  config.eval.num_images)."""
  if not left:
    return
  where = (f"the first {n} of {size} test images (config.eval.num_images={num_images})"
           if n < size else f"all {size} test images")
  gallery.warn_left_out(
      left, f"; reported: {', '.join(gallery.reported(left))}, over {where}")


class Retrieval:
  """Recall@K and ranks between modalities a and b, both ways.

  Writes `<a>_to_<b>_R@1/5/10`, `<b>_to_<a>_R@1/5/10` and both directions'
  mean and median ranks (mmjax.eval.retrieval.retrieval_metrics), so the
  (image, text) pair writes the contract's image_to_text_* / text_to_image_*.
  An R@K whose gallery holds fewer than K items is left out and named once:
  at construction where the test split's size is known, else at the first
  evaluation.
  An item of a matches an item of b when both belong to the same test image
  (several captions per image, as in COCO; one sketch per image, ...).
  At most one side may have several rows per image.
  """

  def __init__(self, context, pair=("image", "text")):
    if isinstance(pair, str) or len(pair) != 2:
      raise EvaluatorConfigError(f"retrieval pair={pair!r} must name two modalities.")
    self.context, self.pair = context, tuple(pair)
    self.modalities = self.pair
    fa, fb = (context.inputs.get(m, m) for m in self.pair)
    if fa in GROUPED and fb in GROUPED:
      raise EvaluatorConfigError(
          f"retrieval pair={self.pair}: both {fa!r} and {fb!r} have several rows per "
          "image; pair at least one per-image modality (e.g. the image).")
    self.fields = (fa, fb)
    self.last = None  # (embeddings of a, embeddings of b) of the last call
    n = context.eval_images
    if n is not None:
      # Scored as in __call__: the per-image side first. A grouped side's rows
      # (captions) are not counted until the data is read; the first
      # evaluation names any R@K their gallery is too small for.
      (a, b), fb = (self.pair, fb) if fa not in GROUPED else (self.pair[::-1], fa)
      left = left_out(a, b, n, None if fb in GROUPED else n)
      warn_small_gallery(left, n, context.test_split_size, context.num_images)

  def __call__(self, encoders) -> dict[str, float]:
    test = self.context.test
    (a, b), (fa, fb) = self.pair, self.fields
    emb = {a: encoders.encode(a, test[fa]), b: encoders.encode(b, test[fb])}
    self.last = emb
    if fa in GROUPED:  # score as (per-image side, grouped side), name as asked
      a, b, fa, fb = b, a, fb, fa
    owner = (np.asarray(test[GROUPED[fb]]) if fb in GROUPED
             else np.arange(len(test[fb]), dtype=np.int32))
    # Warned here under the names this evaluator writes, not the contract's.
    metrics = retrieval.retrieval_metrics(emb[a], emb[b], owner, warn=False)
    gallery.warn_left_out(left_out(a, b, len(emb[a]), len(emb[b])))
    return rename(metrics, a, b)

  def report(self, workdir: str) -> list[str]:
    """Recall curves, a retrieval grid and a PCA plot for the (image, text) pair;
    for (image, m) with m another per-image modality, a grid of m's queries
    and their top images."""
    if self.last is None:
      return []
    test = self.context.test
    if set(self.fields) == {"image", "text"}:
      image, text = (self.last[m] for m in self.pair) if self.fields == ("image", "text") \
          else (self.last[m] for m in self.pair[::-1])
      captions = self.context.tokenizer.decode(test["text"])
      return reports.write_all(workdir, test, image, text, captions)
    if "image" not in self.fields or set(self.fields) & set(GROUPED):
      return []
    i = self.fields.index("image")
    other, field = self.pair[1 - i], self.fields[1 - i]
    image_emb, query_emb = self.last[self.pair[i]], self.last[other]
    hits = reports.grid_hits(image_emb, query_emb)  # sharded: every process joins
    if jax.process_index() != 0:
      return []
    path = paths.join(workdir, f"retrieval_grid_{other}_image.png")
    return [reports.plot_query_grid(test[field], test["image"], query_emb, image_emb, path,
                                    other, hits=hits)]
