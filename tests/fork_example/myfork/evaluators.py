"""An evaluator mmjax does not ship: how close paired embeddings are, against
mismatched ones."""

import numpy as np


class PairedCosine:
  """Mean cosine of the test split's matched (a, b) pairs and of mismatched
  ones (each a against the next image's b): writes "paired_cosine/<a>_<b>/match",
  ".../mismatch" and ".../gap". Both modalities must have one row per image.
  """

  def __init__(self, context, pair=("image", "sketch")):
    self.context, self.pair = context, tuple(pair)
    self.modalities = self.pair  # mmjax checks these have towers and test data

  def __call__(self, encoders) -> dict[str, float]:
    a, b = self.pair
    test = self.context.test
    za = encoders.encode(a, test[self.context.inputs[a]])
    zb = encoders.encode(b, test[self.context.inputs[b]])
    match = float(np.mean(np.sum(za * zb, axis=1)))
    mismatch = float(np.mean(np.sum(za * np.roll(zb, 1, axis=0), axis=1)))
    key = f"paired_cosine/{a}_{b}/"
    return {key + "match": match, key + "mismatch": mismatch, key + "gap": match - mismatch}
