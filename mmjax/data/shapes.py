"""The embedded default dataset: procedural shapes with paraphrased captions.

Each image holds one object (15%) or two (85%) with a colour, a shape and a
size, on a dim textured background. Captions name every attribute and the
spatial relation (two objects) or the 3x3 grid position (one object), in
several paraphrases, so a model that only counts colours cannot separate "a red
circle left of a blue square" from "a blue circle left of a red square".

Everything is a pure function of (seed, split, index): any process can draw any
row of any batch on its own, with no download and no shared state. Geometry is
in units of the image side, so a scene looks the same at every image size.
"""

import collections
import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

# Far apart in RGB (nearest pair ~100 levels) and all brighter or more
# saturated than the dim backgrounds below.
COLOURS = {
    "red": (225, 40, 40), "green": (40, 185, 60), "blue": (50, 100, 245),
    "yellow": (245, 225, 40), "purple": (155, 60, 215), "orange": (250, 140, 20),
    "white": (245, 245, 245), "cyan": (40, 220, 230),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
# Half-extent of an object's bounding box, as a fraction of the image side.
SIZES = {"small": 0.11, "large": 0.18}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# Relation of the first-named object to the second.
REL_WORDS = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"), "below": ("below", "under", "beneath"),
}
# Relation of the second-named object to the first ("a with b to its right").
REL_IT_WORDS = {
    "left": ("to its left", "on its left"), "right": ("to its right", "on its right"),
    "above": ("above it", "over it"), "below": ("below it", "under it", "beneath it"),
}
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
POS_WORDS = {  # (row, col) of the 3x3 grid -> phrases
    (0, 0): ("in the top left", "in the upper left"),
    (0, 1): ("at the top", "in the top middle"),
    (0, 2): ("in the top right", "in the upper right"),
    (1, 0): ("on the left", "at the left"),
    (1, 1): ("at the center", "in the middle"),
    (1, 2): ("on the right", "at the right"),
    (2, 0): ("in the bottom left", "in the lower left"),
    (2, 1): ("at the bottom", "in the bottom middle"),
    (2, 2): ("in the bottom right", "in the lower right"),
}
# Indexed so that experiments can hold some paraphrases out of training.
# Two-object templates use {a} {rel} {b} / {rel_it}; one-object ones use {pos}.
TEMPLATES = (
    # 0-5: two objects
    "{a} {rel} {b}", "there is {a} {rel} {b}", "{a} is {rel} {b}",
    "a picture of {a} {rel} {b}", "{a} placed {rel} {b}", "{a} with {b} {rel_it}",
    # 6-10: one object
    "{a} {pos}", "there is {a} {pos}", "{a} is {pos}", "a picture of {a} {pos}",
    "{a} alone {pos}",
)
SPLITS = {"train": 0, "test": 1}
TEST_SEED = 1234  # the test split never depends on the training seed
P_SINGLE = 0.15
MARGIN = 0.02  # between an object and the image border
GAP = 0.04  # at least this much background between two objects
DOMINANCE = 1.5  # dominant displacement >= 1.5x the other axis: no diagonal cases
_PICK_STREAM = 1_000_003  # keeps train_batch's caption choice apart from examples
_NOISE_GRID = 16  # noise is drawn on a fixed grid, so it does not depend on image size
_SUPERSAMPLE = 2
_COLOUR_NAMES = tuple(COLOURS)


@dataclasses.dataclass(frozen=True)
class Obj:
  """One object. x, y: centre as fractions of the side (y grows downwards);
  radius: half-extent of its bounding box, same units."""
  colour: str
  shape: str
  size: str
  x: float
  y: float
  radius: float


@dataclasses.dataclass(frozen=True)
class Scene:
  """objects: 1 or 2 Obj. relation: objects[0] relative to objects[1]
  ("left", "right", "above", "below"), None for one object. cell: (row, col) on
  the 3x3 grid for one object, None for two."""
  objects: tuple
  relation: str | None = None
  cell: tuple | None = None


def canonical(scene: Scene) -> str:
  """A caption-independent key: scenes with equal keys have the same captions.

  "B right of A" is normalised to "A left of B" (and below to above), since
  captions use both orders.
  """
  words = [f"{o.size} {o.colour} {o.shape}" for o in scene.objects]
  if scene.cell is not None:
    return f"{words[0]} @ {scene.cell[0]},{scene.cell[1]}"
  if scene.relation in ("right", "below"):
    return f"{words[1]} {INVERSE[scene.relation]} {words[0]}"
  return f"{words[0]} {scene.relation} {words[1]}"


# --- scenes ------------------------------------------------------------------

def _attributes(i: int) -> tuple:
  """Index in [0, 96) -> (colour, shape, size)."""
  return (_COLOUR_NAMES[i % 8], SHAPES[(i // 8) % 6], ("small", "large")[i // 48])


def _obj(i: int, x: float, y: float) -> Obj:
  colour, shape, size = _attributes(i)
  return Obj(colour, shape, size, float(x), float(y), SIZES[size])


def _place_pair(rng, r0: float, r1: float):
  """Centres for two objects that do not touch and whose relation is clear.

  Rejection-samples a block of candidates at a time (vectorised); for two
  large objects about one candidate in eight is accepted.
  """
  lo, hi = np.array([r0, r0, r1, r1]) + MARGIN, 1 - np.array([r0, r0, r1, r1]) - MARGIN
  while True:
    x0, y0, x1, y1 = (lo + rng.random((64, 4)) * (hi - lo)).T
    dx, dy = x0 - x1, y0 - y1
    far = r0 + r1 + GAP  # bounding boxes separated along the dominant axis
    horiz = (np.abs(dx) >= DOMINANCE * np.abs(dy)) & (np.abs(dx) >= far)
    vert = (np.abs(dy) >= DOMINANCE * np.abs(dx)) & (np.abs(dy) >= far)
    ok = np.flatnonzero(horiz | vert)
    if ok.size:
      k = ok[0]
      rel = (("left" if dx[k] < 0 else "right") if horiz[k] else
             ("above" if dy[k] < 0 else "below"))
      return (x0[k], y0[k]), (x1[k], y1[k]), rel


def _sample_scene(rng) -> Scene:
  if rng.random() < P_SINGLE:
    i, cell = rng.integers(96), rng.integers(9)
    row, col = divmod(int(cell), 3)
    r = SIZES[_attributes(i)[2]]
    # Near the cell centre, clipped inside the image; stays within its third.
    xy = (np.array([col, row]) + 0.5) / 3 + rng.uniform(-0.05, 0.05, 2)
    x, y = np.clip(xy, r + MARGIN, 1 - r - MARGIN)
    return Scene((_obj(i, x, y),), cell=(row, col))
  # The second object differs from the first in at least one attribute.
  i0 = int(rng.integers(96))
  i1 = (i0 + 1 + int(rng.integers(95))) % 96
  p0, p1, rel = _place_pair(rng, SIZES[_attributes(i0)[2]], SIZES[_attributes(i1)[2]])
  return Scene((_obj(i0, *p0), _obj(i1, *p1)), relation=rel)


def _sample_background(rng) -> dict:
  """Texture parameters, in image-side units (independent of image size)."""
  c1 = rng.uniform(20, 90, 3)
  bg = {"kind": int(rng.integers(4)), "c1": c1,
        "c2": np.clip(c1 + rng.uniform(-35, 35, 3), 5, 115), "angle": rng.uniform(0, np.pi),
        "period": rng.uniform(0.06, 0.25), "phase": rng.uniform(0, 2 * np.pi)}
  if bg["kind"] == 0:
    bg["noise"] = rng.standard_normal((_NOISE_GRID, _NOISE_GRID))
  return bg


# --- rendering ---------------------------------------------------------------

def _masks(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside-mask in object coordinates (u, v in [-1, 1] span the bounding box).

  Proportions chosen so the six shapes stay distinct at ~7 px across.
  """
  au, av = np.abs(u), np.abs(v)
  if shape == "circle":
    return u * u + v * v <= 1
  if shape == "square":
    return np.maximum(au, av) <= 0.82  # smaller so its area matches the circle's
  if shape == "triangle":  # apex up
    return (v <= 0.8) & (au <= (v + 0.95) / 1.75)
  if shape == "diamond":
    return au + av <= 1
  if shape == "cross":
    return (np.minimum(au, av) <= 0.33) & (np.maximum(au, av) <= 0.95)
  if shape == "ring":
    d2 = u * u + v * v
    return (d2 <= 1) & (d2 >= 0.55 ** 2)
  raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def _background(bg: dict, size: int) -> np.ndarray:
  """float32 [S, S, 3]: a blend of two dim colours by a texture t in [0, 1]."""
  c = (np.arange(size) + 0.5) / size  # pixel centres in image-side units
  x, y = c[None, :], c[:, None]
  kind, cos, sin = bg["kind"], math.cos(bg["angle"]), math.sin(bg["angle"])
  if kind == 0:  # blocky noise on a fixed grid, nearest-neighbour upsampled
    idx = np.arange(size) * _NOISE_GRID // size
    t = np.clip(0.5 + 0.3 * bg["noise"][idx[:, None], idx[None, :]], 0, 1)
  elif kind == 1:  # stripes of random angle and period
    t = 0.5 + 0.5 * np.sin((x * cos + y * sin) * (2 * np.pi / bg["period"]) + bg["phase"])
  elif kind == 2:  # checkerboard
    cell = bg["period"] * 0.6
    t = (np.floor(x / cell + bg["phase"]) + np.floor(y / cell + bg["phase"])) % 2
  else:  # smooth gradient across the image; angle in [0, pi) so sin >= 0
    t = (x * cos + y * sin - min(cos, 0)) / (abs(cos) + sin + 1e-6)
  c1 = bg["c1"].astype(np.float32)
  return c1 + (bg["c2"].astype(np.float32) - c1) * t[..., None].astype(np.float32)


def _draw(img: np.ndarray, obj: Obj) -> None:
  """Composites `obj` into img (float32 [S, S, 3]) in place, anti-aliased.

  Only a patch around the object is evaluated, at 2x resolution and then
  average-pooled, which keeps a 256-image batch cheap.
  """
  size = img.shape[0]
  cx, cy, r = obj.x * size, obj.y * size, obj.radius * size
  q = min(size, math.ceil(2 * r) + 2)  # patch side (px), covers the whole object
  x0 = min(max(math.floor(cx - r), 0), size - q)
  y0 = min(max(math.floor(cy - r), 0), size - q)
  s = (np.arange(q * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
  u, v = (x0 + s[None, :] - cx) / r, (y0 + s[:, None] - cy) / r
  mask = _masks(obj.shape, u, v).reshape(q, _SUPERSAMPLE, q, _SUPERSAMPLE)
  cover = mask.sum(axis=(1, 3), dtype=np.float32)[..., None] / _SUPERSAMPLE ** 2
  patch = img[y0:y0 + q, x0:x0 + q]
  patch += (np.asarray(COLOURS[obj.colour], np.float32) - patch) * cover


def render(scene: Scene, bg: dict, image_size: int) -> np.ndarray:
  """uint8 [S, S, 3] image of `scene` on background `bg`."""
  if image_size < 16:
    raise ValueError(f"image_size={image_size} is too small for the shapes to be "
                     "recognisable; use 24 or more (default 32).")
  img = _background(bg, image_size)
  for obj in scene.objects:
    _draw(img, obj)
  return np.rint(img).astype(np.uint8)  # a convex blend of values in [0, 255]


# --- captions ----------------------------------------------------------------

def _template_ids(scene: Scene, templates, table: Sequence[str]) -> list:
  ids = range(len(table)) if templates is None else templates
  key = "{pos}" if scene.cell is not None else "{b}"
  usable = [int(t) for t in ids if key in table[t]]
  if not usable:
    raise ValueError(f"templates={list(ids)} has no template for "
                     f"{len(scene.objects)}-object scenes; include at least one "
                     f"index whose template contains {key}.")
  return usable


def _caption(scene: Scene, template: str, u: np.ndarray) -> str:
  """One caption from a template and 4 uniforms u (order, size words, phrase)."""
  pick = lambda words, x: words[int(x * len(words))]
  phrase = lambda o, x: f"a {pick(SIZE_WORDS[o.size], x)} {o.colour} {o.shape}"
  objs, rel = scene.objects, scene.relation
  if len(objs) == 2 and u[0] < 0.5:  # "B right of A" as often as "A left of B"
    objs, rel = objs[::-1], INVERSE[rel]
  a = phrase(objs[0], u[1])
  if scene.cell is not None:
    return template.format(a=a, pos=pick(POS_WORDS[scene.cell], u[3]))
  b = phrase(objs[1], u[2])
  return template.format(a=a, b=b, rel=pick(REL_WORDS[rel], u[3]),
                         rel_it=pick(REL_IT_WORDS[INVERSE[rel]], u[3]))


def _caption_draws(rng, n: int) -> tuple:
  """Randomness for n captions; caption j uses only row j, so one can be built alone."""
  return rng.random(), rng.random((n, 4))


def _nth_caption(scene: Scene, draws: tuple, j: int, templates=None,
                 table: Sequence[str] = TEMPLATES) -> str:
  ids = _template_ids(scene, templates, table)
  # Consecutive templates from a random start: n <= len(ids) captions never
  # share a template, so they are real paraphrases.
  t = ids[(int(draws[0] * len(ids)) + j) % len(ids)]
  return _caption(scene, table[t], draws[1][j])


def describe(scene: Scene, rng: np.random.Generator, n: int,
             templates: Sequence[int] | None = None,
             table: Sequence[str] = TEMPLATES) -> list:
  """n paraphrased captions of `scene`, each naming every attribute.

  templates: indices into `table` to draw from (default: all).
  table: the template strings: TEMPLATES (what training draws from) or
    shapes_heldout.TEMPLATES (phrasings training never sees).
  """
  draws = _caption_draws(rng, n)
  return [_nth_caption(scene, draws, j, templates, table) for j in range(n)]


# --- examples and batches ----------------------------------------------------

def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; choose one of {list(SPLITS)}.")
  if seed < 0 or index < 0:
    raise ValueError(f"seed={seed} and index={index} must be >= 0.")
  return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def example(seed: int, split: str, index: int, image_size: int = 32,
            captions_per_image: int = 5, templates=None) -> dict:
  """Example `index` of `split`, a pure function of (seed, split, index).

  Returns {"image": uint8 [S, S, 3], "captions": list[str] (captions_per_image),
           "scene": Scene}. The image depends neither on the captions' settings
  nor (beyond resolution) on image_size, and captions not on image_size.
  """
  rng = _rng(seed, split, index)
  scene, bg = _sample_scene(rng), _sample_background(rng)
  return {"image": render(scene, bg, image_size), "scene": scene,
          "captions": describe(scene, rng, captions_per_image, templates)}


def train_batch(seed: int, step: int, batch_size: int, rows=None, image_size: int = 32,
                captions_per_image: int = 5, templates=None, with_scenes: bool = False) -> dict:
  """Rows `rows` of the global training batch of `step`.

  Row i is train example step * batch_size + i with ONE of its
  captions_per_image captions, chosen from (seed, step, i), so the batch is a
  function of (seed, step) alone whatever the process layout.
  rows: a slice, an index array or a boolean mask over [0, batch_size)
  (default: all rows). Returns {"image": uint8 [b, S, S, 3], "caption": list[str]},
  and "scenes": list[Scene] [b] with with_scenes (for shapes_views' fields).
  """
  which = np.random.default_rng([int(seed), _PICK_STREAM, int(step)]).integers(
      captions_per_image, size=batch_size)
  idx = np.arange(batch_size)[slice(None) if rows is None else rows]
  images = np.empty((len(idx), image_size, image_size, 3), np.uint8)
  captions, scenes = [], []
  for k, i in enumerate(idx):
    rng = _rng(seed, "train", step * batch_size + int(i))
    scene, bg = _sample_scene(rng), _sample_background(rng)
    images[k] = render(scene, bg, image_size)
    draws = _caption_draws(rng, captions_per_image)  # same draws as example()
    captions.append(_nth_caption(scene, draws, int(which[i]), templates))
    scenes.append(scene)
  batch = {"image": images, "caption": captions}
  return {**batch, "scenes": scenes} if with_scenes else batch


@functools.lru_cache(maxsize=4)
def _test_split(image_size: int, num_images: int, captions_per_image: int) -> tuple:
  exs = [example(TEST_SEED, "test", i, image_size, captions_per_image)
         for i in range(num_images)]
  image = np.stack([e["image"] for e in exs])
  image.flags.writeable = False  # shared by every caller of the cache
  t2i = np.repeat(np.arange(num_images, dtype=np.int32), captions_per_image)
  t2i.flags.writeable = False
  return (image, tuple(c for e in exs for c in e["captions"]), t2i,
          tuple(e["scene"] for e in exs))


def test_split(image_size: int = 32, num_images: int = 1000,
               captions_per_image: int = 5) -> dict:
  """The fixed evaluation split (seed TEST_SEED, never the training seed).

  Returns {"image": uint8 [N, S, S, 3] (read-only), "captions": list[str] of
  length N * captions_per_image, grouped per image, "text_to_image": int32
  [N * captions_per_image] (read-only), "scenes": list[Scene] [N]}. Cached in
  process: evaluation calls it repeatedly.
  """
  image, captions, t2i, scenes = _test_split(image_size, num_images, captions_per_image)
  return {"image": image, "captions": list(captions), "text_to_image": t2i,
          "scenes": list(scenes)}


def caption_corpus(num: int, seed: int = 0, captions_per_image: int = 5) -> list:
  """The first `num` training captions of `seed` (all captions of examples 0, 1, ...),
  for training a tokenizer. No image is drawn."""
  out = []
  for index in range(-(-num // captions_per_image)):
    rng = _rng(seed, "train", index)
    scene = _sample_scene(rng)
    _sample_background(rng)  # keeps the caption draws those of example()
    out.extend(describe(scene, rng, captions_per_image))
  return out[:num]


def oracle_recall_at_1(split: dict) -> float:
  """Text-to-image R@1 of a perfect caption reader on `split` (a test_split dict).

  A caption matches every image whose scene has its canonical key equally well,
  so the reader is right with probability 1/k, k = images sharing the key.
  """
  keys = [canonical(s) for s in split["scenes"]]
  counts = collections.Counter(keys)
  per_image = np.array([1.0 / counts[k] for k in keys])
  return float(per_image[np.asarray(split["text_to_image"])].mean())
