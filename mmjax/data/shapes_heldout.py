"""Held-out phrasings of the shapes test split: sentence frames training never uses.

A text tower that learned the training captions' frames by rote fails on new
ones; one that reads the words (a pretrained tower, say) does not. Retrieval on
the test images captioned only with these frames (`heldout_split`, the
`heldout` evaluator) measures that. The frames fill the same slots as
`shapes.TEMPLATES` ({a}, {b}, {rel}, {rel_it}, {pos}) with the same attribute
and relation words, so only the phrasing is new.
"""

import functools

import numpy as np

from mmjax.data import shapes

# New verbs, word orders and frames. Each caption fits in 16 tokens of the
# default shapes tokenizer, as the training captions do, so a context_length-16
# text tower reads them whole.
TEMPLATES = (
    # 0-4: two objects
    "{a} sits {rel} {b}", "{a} and {b} {rel_it}", "see {a} {rel} {b}",
    "it is {a} {rel} {b}", "{a} seen {rel} {b}",
    # 5-9: one object
    "{a} can be seen {pos}", "here we see {a} {pos}", "{pos} there is {a}",
    "{pos} sits {a}", "{pos} we see {a}",
)
# Its own random stream: neither split's captions depend on the other's draws.
_STREAM = 2_000_003


@functools.lru_cache(maxsize=4)
def _captions(scenes: tuple, captions_per_image: int) -> tuple:
  out = []
  for i, scene in enumerate(scenes):
    rng = np.random.default_rng(
        [shapes.TEST_SEED, shapes.SPLITS["test"], i, _STREAM])
    out.extend(shapes.describe(scene, rng, captions_per_image, table=TEMPLATES))
  return tuple(out)


def heldout_split(image_size: int = 32, num_images: int = 1000,
                  captions_per_image: int = 5) -> dict:
  """The test split's images captioned only with TEMPLATES.

  The same N images, scenes and caption-to-image layout as
  `shapes.test_split` (image i owns captions i * captions_per_image ...), with
  every caption in a frame training never draws. Deterministic.

  Returns the keys of test_split: {"image": uint8 [N, S, S, 3] (read-only,
  shared with test_split), "captions": list[str] [N * captions_per_image],
  "text_to_image": int32 [N * captions_per_image], "scenes": list[Scene] [N]}.
  """
  split = shapes.test_split(image_size, num_images, captions_per_image)
  split["captions"] = list(_captions(tuple(split["scenes"]), captions_per_image))
  return split
