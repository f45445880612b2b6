"""Tests for the run-time half of mmjax/data/preprocess.py: bytes -> model input.

encode_image (the prepare-time half) is tested through the build in
test_prepare.py.
"""

import io

import numpy as np
from PIL import Image
import pytest

from mmjax.data import preprocess

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
RATIO = (3 / 4, 4 / 3)  # random_resized_crop_box's default


def encode(pixels, fmt="PNG", mode=None):
  """uint8 array [H, W] or [H, W, C] -> encoded bytes."""
  out = io.BytesIO()
  Image.fromarray(np.asarray(pixels, np.uint8), mode).save(out, format=fmt)
  return out.getvalue()


def noise(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def halves(height, width, left=RED, right=BLUE):
  """[H, W, 3]: left half one colour, right half another, so a mirror shows."""
  pixels = np.empty((height, width, 3), np.uint8)
  pixels[:, :width // 2] = left
  pixels[:, width // 2:] = right
  return pixels


def thirds(height, width, outer=RED, middle=GREEN):
  """[H, W, 3]: the middle third of the longer side one colour, the rest another."""
  pixels = np.empty((height, width, 3), np.uint8)
  pixels[:] = outer
  if width >= height:
    pixels[:, width // 3:2 * width // 3] = middle
  else:
    pixels[height // 3:2 * height // 3] = middle
  return pixels


def assert_box(box, width, height, scale, ratio):
  """The box lies in the image, and its area fraction and aspect are in bounds.

  w and h are the rounded sides of a crop whose area fraction was drawn from
  `scale` and aspect from `ratio`, so the bounds hold for the unrounded sides
  w +- 0.5, h +- 0.5, and nothing looser.
  """
  left, top, right, bottom = box
  assert all(isinstance(v, int) for v in box), box
  assert 0 <= left < right <= width and 0 <= top < bottom <= height, box
  w, h = right - left, bottom - top
  area = width * height
  assert (w + 0.5) * (h + 0.5) / area >= scale[0] and (w - 0.5) * (h - 0.5) / area <= scale[1], (
      box, w * h / area)
  assert (w + 0.5) / (h - 0.5) >= ratio[0] and (w - 0.5) / (h + 0.5) <= ratio[1], (box, w / h)


# ------------------------------------------------------------ decode_rgb


@pytest.mark.parametrize("mode, pixels", [
    ("RGB", noise(12, 20)),
    ("RGBA", np.dstack([noise(12, 20), np.full((12, 20), 255, np.uint8)])),
    ("L", noise(12, 20)[..., 0]),
])
def test_decode_rgb_gives_rgb(mode, pixels):
  image = preprocess.decode_rgb(encode(pixels, mode=mode))
  assert image.mode == "RGB" and image.size == (20, 12)
  got = np.asarray(image)  # still readable: the file closed, the pixels did not
  expected = pixels[..., :3] if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
  np.testing.assert_array_equal(got, expected)


def test_decode_rgb_palette_and_jpeg():
  palette = Image.fromarray(halves(10, 16)).convert("P")
  out = io.BytesIO()
  palette.save(out, format="PNG")
  np.testing.assert_array_equal(np.asarray(preprocess.decode_rgb(out.getvalue())),
                                halves(10, 16))
  jpeg = preprocess.decode_rgb(encode(np.full((8, 8, 3), 128), fmt="JPEG"))
  assert jpeg.mode == "RGB" and np.abs(np.asarray(jpeg, int) - 128).max() <= 2


def test_corrupt_bytes_raise_what_the_pipeline_catches():
  png, jpeg = encode(noise(32, 48)), encode(noise(32, 48), fmt="JPEG")
  for data in (b"", b"not an image at all", png[:len(png) // 2], jpeg[:len(jpeg) // 2]):
    with pytest.raises(OSError):
      preprocess.decode_rgb(data)
    # pipeline.RecordBatch counts a record as bad on these two and moves on;
    # anything else would end the run.
    with pytest.raises((ValueError, OSError)):
      preprocess.train_image(data, 8, np.random.default_rng(0))
    with pytest.raises((ValueError, OSError)):
      preprocess.eval_image(data, 8)
  # Damage anywhere in the file, not only at the end (a bad disk sector): it
  # may decode, or raise one of the two; any other exception fails the test.
  rng = np.random.default_rng(0)
  for data in (png, jpeg):
    for _ in range(200):
      damaged = bytearray(data)
      damaged[rng.integers(len(damaged))] ^= 1 << int(rng.integers(8))
      try:
        preprocess.decode_rgb(bytes(damaged))
      except (ValueError, OSError):
        pass


# ------------------------------------------------------------ random_resized_crop_box


@pytest.mark.parametrize("width, height, scale, ratio", [
    (200, 150, (0.9, 1.0), RATIO),  # the default scale on 4:3 images
    (150, 200, (0.9, 1.0), RATIO),
    (256, 256, (0.9, 1.0), RATIO),
    (300, 150, (0.08, 1.0), RATIO),  # Inception's scale, on images outside the ratio
    (150, 300, (0.08, 1.0), RATIO),
    (256, 256, (0.25, 0.5), RATIO),  # every draw fits: the upper bound binds
    (256, 256, (0.08, 1.0), (0.5, 2.0)),
])
def test_crop_box_is_inside_and_within_scale_and_ratio(width, height, scale, ratio):
  rng = np.random.default_rng(0)
  boxes = [preprocess.random_resized_crop_box(width, height, rng, scale=scale, ratio=ratio)
           for _ in range(300)]
  for box in boxes:
    assert_box(box, width, height, scale, ratio)
  assert len(set(boxes)) > 100  # random, not one box


def test_crop_box_covers_its_ranges():
  rng = np.random.default_rng(1)
  boxes = np.array([preprocess.random_resized_crop_box(256, 256, rng, scale=(0.08, 1.0))
                    for _ in range(500)])
  w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  fraction, aspect = w * h / 256**2, w / h
  assert fraction.min() < 0.15 and fraction.max() > 0.9
  assert aspect.min() < 0.8 and aspect.max() > 1.25
  # Crops narrower than the image land anywhere, including against each edge.
  narrow, short = w < 256, h < 256
  assert (boxes[narrow, 0] == 0).any() and (boxes[narrow, 2] == 256).any()
  assert (boxes[short, 1] == 0).any() and (boxes[short, 3] == 256).any()
  small = fraction < 0.25
  for centre in ((boxes[small, 0] + boxes[small, 2]) / 2, (boxes[small, 1] + boxes[small, 3]) / 2):
    assert centre.min() < 64 and centre.max() > 192


@pytest.mark.parametrize("width, height", [(1000, 10), (10, 1000), (640, 90), (90, 640)])
def test_crop_box_fallback_is_centred_largest_within_ratio(width, height):
  # Far outside RATIO, no draw of 90-100% of the area fits: after 10 misses
  # the box is the largest centred one with the aspect clipped to RATIO.
  boxes = {preprocess.random_resized_crop_box(width, height, np.random.default_rng(seed))
           for seed in range(20)}
  assert len(boxes) == 1
  (box,) = boxes
  assert_box(box, width, height, (0.0, 1.0), RATIO)
  left, top, right, bottom = box
  w, h = right - left, bottom - top
  assert (h == height) if width > height else (w == width)  # largest: spans the short side
  assert left == (width - w) // 2 and top == (height - h) // 2  # centred
  assert abs(w / h - (RATIO[1] if width > height else RATIO[0])) < 1 / min(w, h)


def test_crop_box_is_deterministic_in_the_rng():
  draw = lambda seed: [preprocess.random_resized_crop_box(
      200, 150, np.random.default_rng(seed), scale=(0.08, 1.0)) for _ in range(5)]
  assert draw(7) == draw(7)
  assert draw(7) != draw(8)


# ------------------------------------------------------------ train_image


def test_train_image_shape_and_determinism():
  data = encode(noise(48, 64))
  outputs = [preprocess.train_image(data, 24, np.random.default_rng(seed)) for seed in range(6)]
  for out in outputs:
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
  np.testing.assert_array_equal(
      preprocess.train_image(data, 24, np.random.default_rng(3)), outputs[3])
  distinct = {out.tobytes() for out in outputs}
  assert len(distinct) >= 5  # another seed, another crop


def test_train_image_without_crop_is_eval_image():
  # scale (1, 1) on a square image: the whole image, resized as eval does.
  data = encode(noise(40, 40))
  for seed in range(5):
    np.testing.assert_array_equal(
        preprocess.train_image(data, 16, np.random.default_rng(seed), scale=(1.0, 1.0)),
        preprocess.eval_image(data, 16))


def mirrored(out):
  """Whether a red|blue image came out blue|red."""
  left, right = out[:, :4].reshape(-1, 3).mean(0), out[:, -4:].reshape(-1, 3).mean(0)
  assert abs(left[0] - right[0]) > 200  # the crop kept both halves
  return left[2] > left[0]


def test_flip():
  # Crops of >= 90% of a square keep both halves, so the colour of the left
  # edge says whether the image was mirrored.
  data = encode(halves(64, 64))
  flips = []
  for seed in range(200):
    plain = preprocess.train_image(data, 16, np.random.default_rng(seed), scale=(0.9, 1.0))
    flipped = preprocess.train_image(data, 16, np.random.default_rng(seed), scale=(0.9, 1.0),
                                     flip=True)
    assert not mirrored(plain)  # flip=False (the default) never mirrors
    assert flipped.flags.c_contiguous  # a mirrored view would be copied later, per batch
    # The flip draw comes after the crop's: the same crop, maybe mirrored.
    if mirrored(flipped):
      np.testing.assert_array_equal(flipped, plain[:, ::-1])
      flips.append(seed)
    else:
      np.testing.assert_array_equal(flipped, plain)
  assert 60 < len(flips) < 140  # about half; binomial(200, 0.5) has sd ~7


# ------------------------------------------------------------ eval_image


@pytest.mark.parametrize("height, width", [(30, 90), (90, 30), (12, 36), (36, 12)])
@pytest.mark.parametrize("size", [8, 24, 48])
def test_eval_image_keeps_the_centre_square(height, width, size):
  out = preprocess.eval_image(encode(thirds(height, width)), size)
  assert out.shape == (size, size, 3) and out.dtype == np.uint8
  # The green middle third, none of the red ends. The filter reads a few
  # pixels beyond the box, so the outermost rows or columns blend in some red
  # (as resizing before cropping would): green-ish there, not green.
  out = out.astype(int)
  assert (out[..., 1] - out[..., 0]).min() > 60
  assert out[..., 0].mean() < 10 and out[..., 1].mean() > 245


def test_eval_image_crops_exactly_at_native_size():
  wide, tall = noise(32, 49), noise(49, 32, seed=1)
  np.testing.assert_array_equal(preprocess.eval_image(encode(wide), 32), wide[:, 8:40])
  np.testing.assert_array_equal(preprocess.eval_image(encode(tall), 32), tall[8:40])
  square = noise(20, 20, seed=2)
  np.testing.assert_array_equal(preprocess.eval_image(encode(square), 20), square)
