"""Image preprocessing of released models, as their originals do it.

A recipe is a plain JSON-able dict (it goes into `Imported.image`):
  size: side in pixels of the square the image tower takes.
  resize: "squash" (both sides to size, aspect ratio lost) or
    "shortest_side_crop" (shorter side to size, longer side
    int(size * long / short), then the centre size x size crop).
  interpolation: "bilinear" | "bicubic".
  antialias: whether the kernel widens when shrinking (PIL and torchvision
    antialias; big_vision's resize does not).
  backend: whose resize to reproduce, on the host:
    "pil": PIL's Image.resize (open_clip, OpenAI CLIP, transformers' *Pil
      processors), rounded to uint8 as PIL does.
    "torchvision": transformers' default processors (torchvision on uint8
      tensors): the same kernels, width pass then height pass, each rounded
      to uint8 (PIL may run the height pass first: on hard downscales of
      noisy images that order moves pixels by several 1/255).
    "tensorflow": big_vision's tf.image.resize without antialias (half-pixel
      centres, float32), clipped to [0, 255] and truncated to uint8 by its
      tf.cast (bilinear only).
  mean, std: per channel, on [0, 1] pixels: out = (x / 255 - mean) / std.

Presets:
  big_vision: `resize(size)|value_range(-1, 1)` (SigLIP and SigLIP 2 .npz):
    squash, bilinear, no antialias, [-1, 1].
  hf_siglip: SiglipImageProcessor (SigLIP, SigLIP 2 fixed resolution):
    squash, bicubic, antialiased, mean = std = 0.5, torchvision.
  clip: OpenAI CLIP and open_clip: shortest side, bicubic, antialiased,
    centre crop, OpenAI's mean/std, PIL.
  hf_clip: CLIPImageProcessor: the same through torchvision.
  open_clip_siglip: open_clip's SigLIP ports: squash, bicubic, antialiased,
    mean = std = 0.5, PIL.

What differs from the originals: "pil" is exact (open_clip, *Pil
processors). "torchvision" differs from torch's integer kernels by at most
2/255 on under 1% of the values. "tensorflow" redoes TF's float32 arithmetic
in NumPy; the truncation to uint8 could flip a pixel by 1/255 where the two
land on either side of an integer (none did on the test images).

The size is what the tower takes: the So400m/14 SigLIP at "384" takes 384 px
in big_vision and HF (the patch conv drops the last 6 rows and columns), while
open_clip's ViT-SO400M-14-SigLIP-378 resizes to 378 px: different pixels.
"""

from typing import Sequence, Union

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

_PRESETS = {
    "big_vision": dict(resize="squash", interpolation="bilinear", antialias=False,
                       backend="tensorflow", mean=HALF, std=HALF),
    "hf_siglip": dict(resize="squash", interpolation="bicubic", antialias=True,
                      backend="torchvision", mean=HALF, std=HALF),
    "clip": dict(resize="shortest_side_crop", interpolation="bicubic", antialias=True,
                 backend="pil", mean=OPENAI_MEAN, std=OPENAI_STD),
    "hf_clip": dict(resize="shortest_side_crop", interpolation="bicubic", antialias=True,
                    backend="torchvision", mean=OPENAI_MEAN, std=OPENAI_STD),
    "open_clip_siglip": dict(resize="squash", interpolation="bicubic", antialias=True,
                             backend="pil", mean=HALF, std=HALF),
}
BACKENDS = ("pil", "torchvision", "tensorflow")
PRESETS = tuple(_PRESETS)
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def preset(name: str, size: int) -> dict:
  """The preprocessing recipe of a released model family at `size` px."""
  if name not in _PRESETS:
    raise ValueError(f"unknown image preset {name!r}; choose one of {PRESETS}.")
  recipe = dict(_PRESETS[name], size=int(size))
  recipe["mean"], recipe["std"] = list(recipe["mean"]), list(recipe["std"])
  return recipe


def _rgb(image: np.ndarray, index: int) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"image {index} is {image.dtype}; preprocess takes uint8 pixels "
                     "(decode the file, do not normalise it first).")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or min(image.shape[:2]) < 1:
    raise ValueError(f"image {index} has shape {image.shape}; expected [H, W, 3] "
                     "(or [H, W], [H, W, 1], [H, W, 4]).")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]  # RGBA: alpha dropped, as PIL's convert("RGB") does


def _tf_bilinear_taps(n_in: int, n_out: int):
  """Source rows (low, high) and weights of tf.image.resize bilinear, half-pixel."""
  scale = np.float32(n_in) / np.float32(n_out)
  x = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(x)
  low = np.maximum(floor, 0).astype(np.int64)
  high = np.minimum(np.ceil(x), n_in - 1).astype(np.int64)
  return low, high, (x - floor).astype(np.float32)


def resize_tf_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [height, width, C] as big_vision's resize op.

  Interpolates along x then y in float32 (TensorFlow's order), clips to
  [0, 255] and truncates (tf.cast to uint8).
  """
  x = image.astype(np.float32)
  y0, y1, fy = _tf_bilinear_taps(image.shape[0], height)
  x0, x1, fx = _tf_bilinear_taps(image.shape[1], width)
  fx = fx[None, :, None]
  top = x[y0][:, x0] + (x[y0][:, x1] - x[y0][:, x0]) * fx
  bottom = x[y1][:, x0] + (x[y1][:, x1] - x[y1][:, x0]) * fx
  out = top + (bottom - top) * fy[:, None, None]
  return np.clip(out, 0, 255).astype(np.uint8)


def resized_shape(height: int, width: int, recipe: dict) -> tuple:
  """(h, w) the image is resized to before any crop."""
  size = recipe["size"]
  if recipe["resize"] == "squash":
    return size, size
  if recipe["resize"] != "shortest_side_crop":
    raise ValueError(f"recipe resize {recipe['resize']!r}; expected 'squash' or "
                     "'shortest_side_crop'.")
  short, long = min(height, width), max(height, width)
  long = int(size * long / short)  # torchvision's rounding (down)
  return (size, long) if height <= width else (long, size)


def _backend(recipe: dict) -> str:
  """The recipe's backend, checked against what it can do."""
  # Recipes written before `backend` existed: antialias said which.
  backend = recipe.get("backend") or ("pil" if recipe["antialias"] else "tensorflow")
  if backend not in BACKENDS:
    raise ValueError(f"recipe backend {backend!r}; expected one of {BACKENDS}.")
  if backend == "tensorflow":
    if recipe["interpolation"] != "bilinear" or recipe["antialias"]:
      raise ValueError("backend 'tensorflow' is big_vision's bilinear resize without "
                       "antialias; set interpolation='bilinear', antialias=False.")
  elif recipe["interpolation"] not in _PIL_FILTERS or not recipe["antialias"]:
    raise ValueError(f"backend {backend!r} resizes with antialias=True and interpolation "
                     f"in {tuple(_PIL_FILTERS)}; got {recipe['interpolation']!r}, "
                     f"antialias={recipe['antialias']}.")
  return backend


def resize(image: np.ndarray, recipe: dict) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [size, size, 3]: the recipe's resize and crop."""
  h, w = resized_shape(image.shape[0], image.shape[1], recipe)
  backend = _backend(recipe)
  if backend == "tensorflow":
    image = resize_tf_bilinear(image, h, w)
  else:
    pil, kernel = Image.fromarray(image), _PIL_FILTERS[recipe["interpolation"]]
    if backend == "torchvision":  # width pass, then height pass
      pil = pil.resize((w, pil.height), resample=kernel)
    image = np.asarray(pil.resize((w, h), resample=kernel))
  size = recipe["size"]
  # torchvision's centre crop: offsets rounded half to even (Python's round).
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return image[top:top + size, left:left + size]


def normalize(pixels: np.ndarray, recipe: dict) -> np.ndarray:
  """uint8 [..., 3] -> float32: (x / 255 - mean) / std."""
  mean = np.asarray(recipe["mean"], np.float32)
  std = np.asarray(recipe["std"], np.float32)
  return ((pixels.astype(np.float32) / np.float32(255)) - mean) / std


def preprocess(recipe: dict, images: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
  """uint8 [B, H, W, 3] (or a list of differently sized [H, W, 3]) ->
  float32 [B, size, size, 3], ready for MultiTower.encode_image."""
  if isinstance(images, np.ndarray) and images.ndim != 4:
    raise ValueError(f"images has shape {images.shape}; pass a batch [B, H, W, 3] "
                     "or a list of [H, W, 3] arrays.")
  out = [resize(_rgb(image, i), recipe) for i, image in enumerate(images)]
  size = recipe["size"]
  if not out:
    return np.zeros((0, size, size, 3), np.float32)
  return normalize(np.stack(out), recipe)
