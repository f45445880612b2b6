"""A released model, ready to embed: the object `mmjax.hub.load` returns.

It joins an `Imported` checkpoint (model config and params), the family's
tokenizer and the family's image preprocessing, so that a user cannot pair the
weights with the wrong padding, case or pixel scale:

  model = mmjax.hub.load("siglip_b16.npz", variant="B/16", tokenizer="c4_en.model")
  zimg = model.encode_image(model.preprocess_image(uint8_images))   # [B, D]
  ztxt = model.encode_text(model.tokenize(["a photo of a cat"]))    # [B, D]
  logits = model.logit_scale * zimg @ ztxt.T + model.logit_bias

Encoding runs in batches of `batch_size` under one jit each (the last padded;
mmjax.eval.evaluators.batched), so large inputs compile once per encoder.
"""

from typing import Sequence

import jax
import numpy as np

from mmjax.data import released_images, released_text
from mmjax.eval import evaluators
from mmjax.hub import imported as imported_lib
from mmjax.models import multi_tower


class ReleasedModel:
  """encode_image / encode_text / logit_scale / logit_bias / preprocess_image /
  tokenize of one released model (see the module docstring).

  imported: what a reader returned. batch_size: inputs per compiled call.
  """

  def __init__(self, imported: imported_lib.Imported, batch_size: int = 32):
    self.imported = imported
    self.family = imported.family
    self.batch_size = batch_size
    self.model = multi_tower.MultiTower(**imported.model)
    self.params = jax.device_put(imported.params)
    self.logit_scale = imported.logit_scale
    self.logit_bias = imported.logit_bias
    self.image_size = imported.image_size
    self._tokenizer = None
    model = self.model
    self._image = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))
    self._text = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_text))

  def __repr__(self) -> str:
    return f"ReleasedModel({imported_lib.describe(self.imported)} from {self.imported.source})"

  @property
  def tokenizer(self) -> released_text.ReleasedTokenizer:
    """The family's tokenizer; built on first use, so a model loaded without a
    vocabulary file can still encode images (and ids made elsewhere)."""
    if self._tokenizer is None:
      self._tokenizer = released_text.ReleasedTokenizer(self.imported.text)
    return self._tokenizer

  @property
  def context_length(self) -> int:
    return int(self.imported.text["length"])

  def _batched(self, fn, x: np.ndarray) -> np.ndarray:
    """fn(params, [b, ...]) over x [N, ...] in fixed-size batches -> [N, D] NumPy."""
    if not len(x):
      return np.zeros((0, self.model.embed_dim), np.float32)
    return np.asarray(evaluators.batched(lambda chunk: fn(self.params, chunk), x,
                                         self.batch_size), np.float32)

  @property
  def input_size(self) -> int:
    """The side of the images the family preprocesses to (`preprocess_image`)."""
    return int(self.imported.image.get("size", self.image_size))

  def encode_image(self, pixels) -> np.ndarray:
    """pixels: float32 [B, S, S, 3], resized and normalised the family's way
    (`preprocess_image`; S = input_size) -> float32 [B, D], unit norm.

    Where S is not a multiple of the patch size (So400m/14 at 384 px), the
    original's patch convolution reads only the top-left image_size pixels
    (378): so does this, by cropping them."""
    pixels = np.asarray(pixels, np.float32)
    sides = {self.image_size, self.input_size}
    if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.shape[1] != pixels.shape[2] or (
        pixels.shape[1] not in sides):
      raise ValueError(f"encode_image takes float32 [B, {self.input_size}, {self.input_size}, 3] "
                       f"(this model's resolution), got {pixels.shape}; pass uint8 images "
                       "through preprocess_image first.")
    pixels = pixels[:, :self.image_size, :self.image_size]
    return self._batched(self._image, pixels)

  def encode_text(self, ids) -> np.ndarray:
    """ids: int32 [B, L] token ids padded the family's way (`tokenize`) ->
    float32 [B, D], unit norm."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"encode_text takes int token ids [B, L], got {ids.dtype} {ids.shape}; "
                       "use tokenize(texts).")
    if ids.shape[1] != self.context_length:
      raise ValueError(f"this model reads {self.context_length} tokens per text, got "
                       f"{ids.shape[1]}: pad (or truncate) with tokenize(), as the family does.")
    return self._batched(self._text, ids.astype(np.int32))

  def preprocess_image(self, images) -> np.ndarray:
    """uint8 [B, H, W, 3] (or a list of uint8 [H, W, 3] of any sizes) ->
    float32 [B, S, S, 3]: resized, cropped and normalised the family's way."""
    return released_images.preprocess(self.imported.image, images)

  def tokenize(self, texts: Sequence[str]) -> np.ndarray:
    """texts -> int32 [B, L]: cleaned, cased, tokenised and padded the family's way."""
    if isinstance(texts, str):
      texts = [texts]
    return self.tokenizer.encode(list(texts), allow_empty=True)

  def logits(self, zimg: np.ndarray, ztxt: np.ndarray) -> np.ndarray:
    """[N, D], [M, D] unit norm -> [N, M] logits = scale * zimg @ ztxt.T + bias."""
    return self.logit_scale * np.asarray(zimg) @ np.asarray(ztxt).T + self.logit_bias
