"""Extra per-example fields of the shapes dataset, beyond "image" and "text".

A field is a pure function of a batch's images and scenes, so any process can
compute it for its own rows and the result does not depend on the layout:

- "sketch": a second view of the same scene without colour (the luminance's
  edges), for a third tower that must match shapes and places, not colours.
- "scene_id": a label equal for two examples whose scenes have the same
  captions, so a loss can count them as positives of each other.
- "audio": the scene's sound (shapes_audio.py), float32 samples at
  shapes_audio.SAMPLE_RATE, for an audio tower.

`pipeline` adds the fields named in `config.data.fields` to every batch and to
the test split.
"""

import zlib
from typing import Callable, Sequence

import numpy as np

from mmjax.data import shapes, shapes_audio

# ITU-R BT.601 luma weights, in thousandths: integer arithmetic keeps the
# luminance exact, so two colours with equal luminance give identical sketches
# and a flat image gives exactly zero gradient (no float noise to rescale).
_LUMA = np.array([299, 587, 114], np.int64)
# Sobel derivative along x; its transpose is the derivative along y.
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.int64)


def _luminance(images: np.ndarray) -> np.ndarray:
  """uint8 [B, S, S, 3] -> int64 [B, S, S], 1000 x the luminance."""
  return images.astype(np.int64) @ _LUMA


def _correlate3x3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """int64 [B, H, W] with a 3x3 kernel -> int64 [B, H, W].

  The border is padded by repeating the edge pixels, so the image's own border
  is not mistaken for an edge.
  """
  h, w = x.shape[1:]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
  out = np.zeros_like(x)
  for dy in range(3):
    for dx in range(3):
      if kernel[dy, dx]:
        out += kernel[dy, dx] * padded[:, dy:dy + h, dx:dx + w]
  return out


def sketch(images: np.ndarray) -> np.ndarray:
  """uint8 [B, S, S, 3] -> uint8 [B, S, S, 1]: each image's edges, without colour.

  The Sobel gradient magnitude of the luminance, rescaled per image so that its
  strongest edge is 255 (the contrast of a dim background and a bright object
  then does not set the view's brightness). An image with no edge at all gives
  zeros. Deterministic: exact integer gradients, one float rescale.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"sketch takes uint8 [B, S, S, 3] images, got {images.dtype} "
                     f"{images.shape}; pass a batch's 'image' field.")
  luma = _luminance(images)
  gx, gy = _correlate3x3(luma, _SOBEL_X), _correlate3x3(luma, _SOBEL_X.T)
  magnitude = np.sqrt((gx * gx + gy * gy).astype(np.float64))
  peak = magnitude.max(axis=(1, 2), keepdims=True, initial=0.0)
  # A flat image has peak 0: its scale stays 0 instead of dividing by zero.
  scale = np.divide(255.0, peak, out=np.zeros_like(peak), where=peak > 0)
  return np.rint(magnitude * scale).astype(np.uint8)[..., None]


def scene_id(scene: shapes.Scene) -> int:
  """A stable non-negative int31 of `shapes.canonical(scene)`.

  CRC32 rather than Python's hash(), which is salted per process: every
  process and every run must give the same id. Over all 19,104 canonical keys
  the ids are distinct (tests/data/test_shapes_views.py enumerates them).
  """
  return zlib.crc32(shapes.canonical(scene).encode("utf-8")) & 0x7FFFFFFF


def scene_ids(scenes: Sequence[shapes.Scene]) -> np.ndarray:
  """B scenes -> int32 [B], equal exactly for scenes with the same captions."""
  return np.asarray([scene_id(s) for s in scenes], np.int32)


# name -> (images uint8 [B, S, S, 3], scenes list[Scene] [B]) -> array [B, ...].
FIELDS: dict[str, Callable[[np.ndarray, Sequence[shapes.Scene]], np.ndarray]] = {
    "sketch": lambda images, scenes: sketch(images),
    "scene_id": lambda images, scenes: scene_ids(scenes),
    "audio": lambda images, scenes: shapes_audio.sounds(scenes),
}


def field_spec(name: str, image_size: int) -> tuple[tuple[int, ...], np.dtype]:
  """(shape of ONE example's value, dtype) of field `name` at image side S.

  sketch: ((S, S, 1), uint8); scene_id: ((), int32); audio:
  ((shapes_audio.CLIP_SAMPLES,), float32).
  """
  if name == "sketch":
    return (image_size, image_size, 1), np.dtype(np.uint8)
  if name == "scene_id":
    return (), np.dtype(np.int32)
  if name == "audio":
    return (shapes_audio.CLIP_SAMPLES,), np.dtype(np.float32)
  raise ValueError(f"unknown shapes field {name!r}; the known fields are "
                   f"{sorted(FIELDS)}: use one of them or remove {name!r}.")
