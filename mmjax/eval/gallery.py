"""Galleries too small for some R@K: which keys are left out, and one warning.

A gallery of G < K items has no K-th place, so R@K would be 1 by
construction. Retrieval evaluators leave such keys out of their results and
name them once (`warn_left_out`), at start-up when the sizes are known.
"""

from typing import Mapping, Sequence

import jax

DIRECTIONS = ("image_to_text", "text_to_image")
DEFAULT_KS = (1, 5, 10)
# The left_out dicts already warned about in this process: a run evaluates
# every eval_every steps, and one line per run says it all.
_WARNED: set = set()


def left_out(num_images: int | None, num_texts: int | None,
             ks: Sequence[int] = DEFAULT_KS,
             nouns: tuple[str, str] = ("captions", "images")) -> dict[str, str]:
  """The R@K keys a gallery too small to measure them leaves out, and that gallery.

  A gallery of G < K items has no K-th place: every match is in the top K, so
  R@K would be 1 by construction, say nothing about the model, and pass for a
  measurement in a table or plot. It is not reported.
  Image-to-text ranks among the M captions, text-to-image among the N images.

  Args:
    num_images: N, the text_to_image gallery. num_texts: M, the image_to_text
      one. None: not known yet (captions before they are read); not checked.
    ks: the K of each recall@K.
    nouns: what the image_to_text and text_to_image galleries hold, for the message.

  Returns:
    {"<direction>_R@K": "<G> <noun>"} for each K > G, in (direction, K) order,
    e.g. {"text_to_image_R@10": "8 images"}; empty when every K fits.
  """
  out = {}
  for direction, size, noun in zip(DIRECTIONS, (num_texts, num_images), nouns):
    for k in ks:
      if size is not None and k > size:
        out[f"{direction}_R@{k}"] = f"{size} {noun}"
  return out


def left_out_message(left: Mapping[str, str]) -> str:
  """One line naming the keys of `left_out` and their galleries:
  "text_to_image_R@10 left out: the gallery has 8 images"."""
  by_gallery = {}
  for key, gallery in left.items():
    by_gallery.setdefault(gallery, []).append(key)
  return "; ".join(f"{', '.join(keys)} left out: the gallery has {gallery}"
                   for gallery, keys in by_gallery.items())


def reported(left: Mapping[str, str], ks: Sequence[int] = DEFAULT_KS) -> list[str]:
  """The R@K keys still reported in the directions `left` leaves something out
  of: {"text_to_image_R@10": ...} -> ["text_to_image_R@1", "text_to_image_R@5"].
  Works on renamed keys too ("heldout/...", "image_to_sketch_R@K")."""
  directions = dict.fromkeys(key.rsplit("_R@", 1)[0] for key in left)
  return [f"{d}_R@{k}" for d in directions for k in ks if f"{d}_R@{k}" not in left]


def warn_left_out(left: Mapping[str, str], note: str = "") -> bool:
  """Prints `left_out_message(left)`, why, and `note`, once per process and
  distinct `left`.

  The same keys left out by the same galleries are not named again, whether
  first at start-up (an evaluator's constructor) or at the first evaluation.
  Only process 0 prints. Returns whether it printed.
  """
  seen = tuple(sorted(left.items()))
  if not left or seen in _WARNED:
    return False
  _WARNED.add(seen)
  if jax.process_index() == 0:
    print(f"WARNING: {left_out_message(left)} (R@K needs a gallery of at least K "
          f"items){note}.", flush=True)
  return True
