"""What a reader of a released checkpoint returns: one plain record.

Every reader (big_vision.py, hf.py, open_clip.py) turns its format into an
`Imported`; `mmjax.hub.load` and `python -m mmjax.import_weights` take it from
there, so the three formats share one path into mmjax.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass
class Imported:
  """A released model, read into mmjax's terms.

  family: "siglip", "siglip2" or "clip" (what the text and image recipes follow).
  model: MultiTower kwargs (mmjax.hub.families.siglip / .clip).
  params: the MultiTower params, nested dicts of float32 NumPy arrays.
  image_size: the side in pixels the image tower takes.
  text: the tokenizer recipe (mmjax.data.released_text.TextRecipe fields):
    kind ("sentencepiece" | "clip_bpe"), file (None until the user supplies
    one), length, pad_id, eos_id, bos_id, lower, clean.
  image: the preprocessing recipe (mmjax.data.released_images.ImageRecipe
    fields): size, resize, interpolation, mean, std.
  source: where it was read from, and how (for messages and config.json).
  """

  family: str
  model: dict
  params: dict
  image_size: int
  text: dict
  image: dict
  source: str
  notes: list = dataclasses.field(default_factory=list)  # log lines (e.g. resampling)

  @property
  def logit_scale(self) -> float:
    return float(self.model["temperature_init"])

  @property
  def logit_bias(self) -> float:
    bias = self.model.get("bias_init")
    return 0.0 if bias is None else float(bias)


def describe(imported: Any) -> str:
  towers = imported.model["towers"]
  return (f"{imported.family} (image {towers['image'].get('width')}x"
          f"{towers['image'].get('depth')} at {imported.image_size}px, text "
          f"{towers['text'].get('width')}x{towers['text'].get('depth')}, "
          f"{towers['text'].get('context_length')} tokens)")
