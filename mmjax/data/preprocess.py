"""Image preprocessing.

Prepare time: `encode_image` turns any image file PIL can read into clean
8-bit RGB JPEG or PNG bytes of bounded size, or raises `BadImage` with a short
reason for the prepare report.

Run time: `train_image` (random-resized crop, optional flip) and `eval_image`
(shorter side to size, centre crop) turn those bytes into the model's uint8
input; the model normalises to [-1, 1] on device.
"""

import io
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

MIN_SIDE = 8  # px; smaller images carry no content worth a caption
MAX_SIDE = 1024  # px; larger ones are downscaled, training crops far smaller
JPEG_QUALITY = 95
IMAGE_FORMATS = ("jpeg", "png")
_EXIF_ORIENTATION = 0x0112


class BadImage(ValueError):
  """An image that cannot be stored. `reason` is a report key, e.g. "too_small"."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class EncodedImage(NamedTuple):
  data: bytes  # JPEG or PNG of an 8-bit RGB image
  height: int
  width: int
  changes: tuple[str, ...]  # report keys of what was done, e.g. ("converted_from_CMYK",)


def encode_image(path: str, image_format: str = "jpeg", *, max_side: int = MAX_SIDE,
                 min_side: int = MIN_SIDE, quality: int = JPEG_QUALITY) -> EncodedImage:
  """Reads, validates and re-encodes the image file at `path`.

  The result is 8-bit RGB: grayscale, palette, CMYK and 16-bit images are
  converted, transparent ones composited onto white, EXIF orientation applied.
  An image whose longer side exceeds `max_side` is downscaled to it (large
  JPEGs are decoded at a reduced scale, which is fast and small in memory). A
  JPEG that needs none of this is stored byte for byte when `image_format` is
  "jpeg", so it loses nothing to re-encoding.

  PIL refuses images above twice `Image.MAX_IMAGE_PIXELS` (~179 MP) as
  decompression bombs: those raise BadImage("too_large"). Between that and
  MAX_IMAGE_PIXELS PIL only warns; callers that mean to downscale may silence
  `Image.DecompressionBombWarning`.

  Raises BadImage with reason "missing_image", "unreadable_file",
  "not_an_image", "corrupt_image" (e.g. truncated), "too_large" or
  "too_small" (a side below `min_side`, before or after downscaling).
  """
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format={image_format!r} is not one of {IMAGE_FORMATS}.")
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise BadImage("missing_image", f"{path}: no such file") from None
  except OSError as e:  # a directory, no permission, ...
    raise BadImage("unreadable_file", f"{path}: {e}") from None

  try:
    image = Image.open(io.BytesIO(raw))
  except Image.DecompressionBombError as e:
    raise BadImage("too_large", f"{path}: {e}") from None
  except Exception as e:  # PIL raises many types for bytes it cannot place
    raise BadImage("not_an_image", f"{path}: {type(e).__name__}: {e}") from None
  source_format = image.format
  width, height = image.size
  if min(width, height) < min_side:
    raise BadImage("too_small", f"{path}: {width}x{height} has a side below {min_side} px")
  scale = min(1.0, max_side / max(width, height))
  target = (max(1, round(width * scale)), max(1, round(height * scale)))
  if min(target) < min_side:
    raise BadImage("too_small", f"{path}: {width}x{height} is below {min_side} px on one "
                   f"side once scaled to at most {max_side} px")

  changes = []
  try:
    if scale < 1.0:
      image.draft(None, target)  # JPEG only: decode at 1/2, 1/4 or 1/8 scale, >= target
    image.load()  # where truncated or corrupt data shows
    image, rotated = _apply_exif_orientation(image)
    if rotated:
      changes.append("exif_rotated")
    if image.mode != "RGB":
      changes.append(f"converted_from_{image.mode}")
      image = _to_rgb(image)
  except Exception as e:
    raise BadImage("corrupt_image", f"{path}: {type(e).__name__}: {e}") from None

  if scale < 1.0:
    changes.append("downscaled")
    # Orientation may have swapped the sides: scale the longer one to max_side.
    w, h = image.size
    s = max_side / max(w, h)
    image = image.resize((max(1, round(w * s)), max(1, round(h * s))),
                         Image.Resampling.LANCZOS, reducing_gap=3.0)
  if not changes and source_format == "JPEG" and image_format == "jpeg":
    return EncodedImage(raw, image.height, image.width, ())
  out = io.BytesIO()
  if image_format == "jpeg":
    image.save(out, format="JPEG", quality=quality)
  else:
    image.save(out, format="PNG")
  return EncodedImage(out.getvalue(), image.height, image.width, tuple(changes))


def _apply_exif_orientation(image: Image.Image) -> tuple[Image.Image, bool]:
  """Rotates/flips as EXIF says, so the stored image needs no metadata."""
  try:
    if image.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
      return image, False
    return ImageOps.exif_transpose(image), True
  except Exception:  # broken EXIF is common and harmless: keep the pixels as they are
    return image, False


def _to_rgb(image: Image.Image) -> Image.Image:
  """Any PIL mode -> 8-bit RGB."""
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      image.mode == "P" and "transparency" in image.info):
    # Dropping alpha would expose whatever colour hides under transparent
    # pixels; compositing onto white shows the image as a viewer would.
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  if image.mode.startswith("I") or image.mode == "F":
    # 16-bit (and 32-bit) grayscale: PIL's convert clips at 255, which turns
    # most of a 16-bit image white, so rescale to 8 bits first. Modes "I" and
    # "F" do not say their range: rescale only values that need it.
    values = np.asarray(image, dtype=np.float64)
    top = values.max(initial=0.0)
    if image.mode.startswith("I;16") or 255.0 < top <= 65535.0:
      values = values / 257.0
    elif top > 65535.0:
      values = values * (255.0 / top)
    elif image.mode == "F" and top <= 1.0:
      values = values * 255.0
    gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
  return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


# ---------------------------------------------------------------------------
# Run time: encoded bytes -> the model's uint8 input. The model maps uint8 to
# [-1, 1] on device (mmjax.models.multi_tower.tower_input), so the host ships 1 byte per
# value instead of 4.


def decode_rgb(data: bytes) -> Image.Image:
  """Encoded image bytes -> 8-bit RGB PIL image (raises OSError if corrupt)."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
  """A random crop (left, top, right, bottom) of `scale` of the area.

  The aspect ratio is drawn log-uniformly from `ratio`; a draw that does not
  fit is retried, and after 10 misses the largest centred crop with the
  aspect ratio clipped to `ratio` is used (as Inception-style crops do).
  """
  area = width * height
  log_ratio = np.log(ratio)
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(*log_ratio))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return left, top, left + w, top + h
  aspect = min(max(width / height, ratio[0]), ratio[1])
  w, h = (width, int(round(width / aspect))) if width / height < aspect else (
      int(round(height * aspect)), height)
  w, h = min(w, width), min(h, height)
  left, top = (width - w) // 2, (height - h) // 2
  return left, top, left + w, top + h


def train_image(data: bytes, size: int, rng: np.random.Generator, *,
                scale=(0.9, 1.0), flip: bool = False) -> np.ndarray:
  """Encoded bytes -> uint8 [size, size, 3]: random-resized crop, optional flip.

  Flip is off by default: captions say "left of" and "right of", and a
  mirrored image would contradict them.
  """
  image = decode_rgb(data)
  box = random_resized_crop_box(*image.size, rng, scale=scale)
  image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
  out = np.asarray(image, np.uint8)
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def eval_image(data: bytes, size: int) -> np.ndarray:
  """Encoded bytes -> uint8 [size, size, 3]: shorter side to size, centre crop."""
  image = decode_rgb(data)
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.resize((size, size), Image.Resampling.BICUBIC,
                       box=(left, top, left + side, top + side))
  return np.asarray(image, np.uint8)
