"""big_vision SigLIP / SigLIP 2 checkpoints (.npz) read into mmjax, and written back.

A big_vision two-tower checkpoint is one .npz of "/"-joined flax paths,
optionally under `params/`:

  img/embedding/{kernel [p, p, 3, W], bias}    img/pos_embedding [1, g * g, W]
  img/Transformer/encoderblock_{i}/...         (or img/Transformer/encoderblock/...
  img/Transformer/encoder_norm                  with a leading depth axis: scan=True)
  img/MAPHead_0/... (pool "map") | img/cls (pool "tok") | neither (pool "gap")
  img/head/{kernel, bias}                       (absent: the pooled features are the embedding)
  txt/Embed_0/embedding [V, W]                  txt/pos_embedding [1, L, W]
  txt/Encoder_0/encoderblock_{i}/... or txt/Encoder_0/encoderblock/...
  txt/Encoder_0/encoder_norm                    txt/head/{kernel, bias} (optional)
  t [1] (log of the logit scale)                b [1] (logit bias; optional, else 0)

Inside a block: LayerNorm_0, MultiHeadDotProductAttention_0/{query, key, value}
(kernel [W, H, Dh], bias [H, Dh]), out (kernel [H, Dh, W], bias [W]), LayerNorm_1,
MlpBlock_0/Dense_0, Dense_1. Released files often store bfloat16 arrays, which
NumPy saves as raw 2-byte records (dtype 'V2'); they are decoded here.

  imported = read("siglip2_b16_256.npz", variant="B/16")
  write(imported, "copy.npz", scan=True)
"""

import io
import math
import os
import re
import zipfile
import zlib
from typing import Mapping

import numpy as np

from mmjax import paths
from mmjax.hub import families
from mmjax.hub import mapping
from mmjax.hub.imported import Imported
from mmjax.hub.big_vision_map import entries

GEMMA_VOCAB = 256_000  # SigLIP 2's Gemma sentencepiece; SigLIP's are 32k / 250k.

# big_vision pairs the g-opt image towers with a So400m text tower (SigLIP 2 release).
_TEXT_OF = {"g-opt": "So400m", "G-opt": "So400m"}
_SIZE_KEYS = ("width", "depth", "mlp_dim", "num_heads")

_BLOCK = re.compile(r"^(.*)/encoderblock/(.*)$")
_LAYER = re.compile(r"^(.*)/encoderblock_(\d+)/(.*)$")


class CheckpointError(ValueError):
  """A .npz that cannot be read at all (truncated, corrupt, not an npz)."""


# ---- reading the file -----------------------------------------------------------------

def _decode_array(name: str, value: np.ndarray, source: str) -> np.ndarray:
  """bfloat16 saved by NumPy as void 'V2' -> float32 (the high half of a float32)."""
  if value.dtype.kind == "V":
    if value.dtype.itemsize != 2:
      raise CheckpointError(f"{source}: {name} has dtype {value.dtype}, not bfloat16 "
                            "('V2') or a number; the file is not a big_vision checkpoint.")
    bits = value.view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)
  return value


def load_arrays(path) -> dict[str, np.ndarray]:
  """Every array of the .npz at `path` (local or gs://), bfloat16 decoded to float32.

  Raises CheckpointError naming the file when it is truncated or corrupt.
  """
  path = os.fspath(path)
  try:
    if paths.is_remote(path):
      return _read_npz(io.BytesIO(paths.read_bytes(path)), path)
    return _read_npz(path, path)
  except CheckpointError:
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
    raise CheckpointError(f"{path} is incomplete or corrupt (a truncated download or copy?): "
                          f"{e}; download it again.") from e


def _read_npz(file, source: str) -> dict[str, np.ndarray]:
  loaded = np.load(file, allow_pickle=False)
  if not hasattr(loaded, "files"):  # a .npy: one array
    raise CheckpointError(f"{source} holds one array, not a big_vision .npz of named params.")
  with loaded as npz:
    return {name: _decode_array(name, npz[name], source) for name in npz.files}


# ---- normalising the tensor names ------------------------------------------------------

def _strip_prefix(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {name.removeprefix("params/"): value for name, value in tensors.items()}


def unstack_blocks(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Scanned blocks (`.../encoderblock/X` [depth, ...]) -> per-layer names
  (`.../encoderblock_{i}/X` [...]), as big_vision's scan_to_pyloop."""
  out = {}
  for name, value in tensors.items():
    match = _BLOCK.match(name)
    if not match:
      out[name] = value
      continue
    for i, layer in enumerate(value):
      per_layer = f"{match[1]}/encoderblock_{i}/{match[2]}"
      if per_layer in tensors:
        raise mapping.MappingError(f"{name} (scanned) and {per_layer} (per layer) are both "
                                   "in the file; keep one layout.")
      out[per_layer] = layer
  return out


def stack_blocks(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of unstack_blocks (big_vision's pyloop_to_scan)."""
  out, layers = {}, {}
  for name, value in tensors.items():
    match = _LAYER.match(name)
    if match:
      layers.setdefault(f"{match[1]}/encoderblock/{match[3]}", {})[int(match[2])] = value
    else:
      out[name] = value
  for name, by_layer in layers.items():
    out[name] = np.stack([by_layer[i] for i in range(len(by_layer))])
  return out


# ---- sizes ---------------------------------------------------------------------------

def _decode(variant, what: str) -> dict:
  """"B/16" or {"variant": "B/16", "depth": 2, ...} (big_vision's config style:
  a variant and explicit overrides, or only sizes) -> the sizes dict."""
  if isinstance(variant, Mapping):
    spec = dict(variant)
    base = spec.pop("variant", None)
    unknown = sorted(set(spec) - {*_SIZE_KEYS, "patch_size"})
    if unknown:
      raise ValueError(f"{what} {variant!r}: unknown keys {unknown}; give a variant and "
                       f"any of {[*_SIZE_KEYS, 'patch_size']}.")
    sizes = _decode(base, what) if base else {}
    sizes.update(spec)
  else:
    sizes = families.decode_variant(variant)
  missing = [k for k in _SIZE_KEYS if k not in sizes]
  if missing:
    raise ValueError(f"{what} {variant!r} leaves out {missing}; name a variant ('B/16') "
                     "or give every size.")
  return sizes


def _text_default(variant):
  if isinstance(variant, Mapping):
    return {k: v for k, v in variant.items() if k != "patch_size"}
  name = variant.partition("/")[0]
  return _TEXT_OF.get(name, name)


# ---- position embeddings -------------------------------------------------------------

def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of linear interpolation with the end points of both
  grids aligned: scipy.ndimage.zoom(order=1)'s sampling, which big_vision's
  resample_posemb uses."""
  step = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
  coords = np.arange(n_out, dtype=np.float64) * step
  lo = np.minimum(np.floor(coords).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = coords - lo
  weights = np.zeros((n_out, n_in))
  np.add.at(weights, (np.arange(n_out), lo), 1 - frac)
  np.add.at(weights, (np.arange(n_out), hi), frac)
  return weights


def resample_posemb(posemb: np.ndarray, grid: int) -> np.ndarray:
  """posemb: [1, g * g, W] -> [1, grid * grid, W], bilinear over the g x g grid
  (unchanged when g == grid)."""
  g = math.isqrt(posemb.shape[1])
  if g == grid:
    return posemb
  weights = _linear_weights(g, grid)
  old = posemb.reshape(g, g, -1).astype(np.float64)
  new = np.einsum("ai,bj,ijw->abw", weights, weights, old)
  return new.reshape(1, grid * grid, -1).astype(posemb.dtype)


# ---- reading -------------------------------------------------------------------------

def _need(tensors, name: str, source: str) -> np.ndarray:
  if name not in tensors:
    found = sorted(tensors)[:8]
    raise mapping.MappingError(
        f"{source} has no {name}, so it is not a big_vision two-tower (SigLIP) checkpoint "
        f"(its first names: {found}). A checkpoint of one tower needs that tower's own reader.")
  return tensors[name]


def _legacy_fixes(tensors: dict, notes: list) -> None:
  """The two older layouts big_vision itself still loads (vit.fix_old_checkpoints,
  text_transformer.load), folded into today's."""
  extra = tensors.pop("txt/Encoder_0/pos_embedding", None)
  if extra is not None:  # some checkpoints added a second text posemb by mistake
    tensors["txt/pos_embedding"] = tensors["txt/pos_embedding"] + extra
    notes.append("summed txt/Encoder_0/pos_embedding into txt/pos_embedding (older layout).")
  pos = tensors.get("img/pos_embedding")
  if pos is not None and "img/cls" in tensors:
    n = pos.shape[1]
    if math.isqrt(n - 1) ** 2 == n - 1 and math.isqrt(n) ** 2 != n:
      tensors["img/cls"] = tensors["img/cls"] + pos[:, :1]  # the class token's position
      tensors["img/pos_embedding"] = pos[:, 1:]
      notes.append("folded the class token's position embedding into img/cls (older layout).")


def _recipes(vocab: int, text_len: int, res: int, tokenizer):
  from mmjax.data import released_images, released_text  # pylint: disable=g-import-not-at-top
  family = "siglip2" if vocab == GEMMA_VOCAB else "siglip"
  text = released_text.preset(family, file=tokenizer, length=text_len)
  return family, text, released_images.preset("big_vision", res)


def read(path, *, variant=None, res: int | None = None, text_len: int | None = None,
         text_variant=None, tokenizer: str | None = None) -> Imported:
  """A big_vision SigLIP / SigLIP 2 .npz as an `Imported`.

  variant: the image tower, "B/16", "So400m/14", ... (or big_vision-style
    {"variant": "B/16", "depth": 6} / explicit sizes); text_variant: the text
    tower's, by default the same size ("So400m" for g-opt, as released).
  res: the image side in pixels; by default the stored grid x patch size. Another
    value resamples the position embeddings (bilinear, as big_vision does).
  text_len: the caption length; must be the stored one (checked).
  tokenizer: the sentencepiece .model for the text recipe (else None).
  """
  path = os.fspath(path)
  return from_arrays(load_arrays(path), variant=variant, res=res, text_len=text_len,
                     text_variant=text_variant, tokenizer=tokenizer, source=path)


def from_arrays(tensors: Mapping[str, np.ndarray], *, variant=None, res: int | None = None,
                text_len: int | None = None, text_variant=None,
                tokenizer: str | None = None, source: str = "the arrays") -> Imported:
  """`read` on arrays already loaded: big_vision name -> array (any layout above)."""
  notes = []
  tensors = _strip_prefix(tensors)
  where = source + (" (scanned blocks are listed per layer)"
                    if any(_BLOCK.match(name) for name in tensors) else "")
  tensors = _prepare(unstack_blocks(tensors), notes)
  if variant is None:
    raise ValueError(f"a big_vision .npz does not record its sizes: pass variant=, "
                     f"{_suggest(tensors)}.")
  text_variant = text_variant or _text_default(variant)
  image = _decode(variant, "variant")
  if "patch_size" not in image:
    raise ValueError(f"variant {variant!r} has no patch size; write it as 'B/16'.")
  text = {k: v for k, v in _decode(text_variant, "text_variant").items() if k != "patch_size"}

  p, grid = image["patch_size"], _stored_grid(tensors, source)
  res = grid * p if res is None else int(res)
  if res % p:
    raise ValueError(f"res={res} is not a multiple of the patch size {p}; use "
                     f"{res // p * p} or {(res // p + 1) * p}.")
  vocab = _need(tensors, "txt/Embed_0/embedding", source).shape[0]
  stored_len = _need(tensors, "txt/pos_embedding", source).shape[1]
  if text_len is not None and text_len != stored_len:
    raise ValueError(f"text_len={text_len}, but {source} holds {stored_len} text positions "
                     f"(txt/pos_embedding); leave text_len out or pass {stored_len}.")
  family, text_recipe, image_recipe = _recipes(vocab, stored_len, res, tokenizer)
  pad_id = text_recipe.get("pad_id")
  text.update(vocab_size=vocab, context_length=stored_len, pad_id=pad_id or 0)

  dims = _embedding_sizes(tensors, image, text)
  model = families.siglip(
      image, text, embed_dim=dims["image"][1] if "img/head/kernel" in tensors
      else dims["text"][1], image_head="img/head/kernel" in tensors,
      text_head="txt/head/kernel" in tensors,
      scale=float(np.exp(tensors["t"][0])) if "t" in tensors else 1.0,
      bias=float(tensors["b"][0]),
      image_pool=("map" if "img/MAPHead_0/probe" in tensors else
                  "cls" if "img/cls" in tensors else "gap"))
  what = f"SigLIP {_describe(variant)} (text {_describe(text_variant)})"
  expected = mapping.expected_shapes(model, grid * p, stored_len)
  params = mapping.read(tensors, entries(model), expected, where, what=what)
  if dims["image"][1] != dims["text"][1]:  # after read: a wrong variant gets its list first
    raise mapping.MappingError(
        f"{source}: the towers embed into different sizes: {dims['image'][0]} gives "
        f"{dims['image'][1]}, {dims['text'][0]} gives {dims['text'][1]}; the file is not "
        "one two-tower model, or text_variant is not its text tower's.")
  if res != grid * p:
    towers = params["image_tower"]
    towers["pos_embedding"] = resample_posemb(towers["pos_embedding"], res // p)
    notes.append(f"resampled the image position embeddings from a {grid}x{grid} grid "
                 f"({grid * p}px) to {res // p}x{res // p} ({res}px).")
  return Imported(family=family, model=model, params=params, image_size=res, text=text_recipe,
                  image=image_recipe, source=f"big_vision npz {source}", notes=notes)


def _prepare(tensors: dict, notes: list) -> dict:
  """t and b as [1] (b, which big_vision adds only with bias_init, defaults to
  0), and the older layouts folded into today's."""
  for name in ("t", "b"):
    if name in tensors:
      tensors[name] = np.reshape(tensors[name], (-1,))
  if "b" not in tensors:
    tensors["b"] = np.zeros((1,), np.float32)
    notes.append("no logit bias `b` in the checkpoint: using 0.")
  _legacy_fixes(tensors, notes)
  return tensors


def _stored_grid(tensors, source: str) -> int:
  pos = _need(tensors, "img/pos_embedding", source)
  grid = math.isqrt(pos.shape[1]) if pos.ndim == 3 else 0
  if not grid or grid ** 2 != pos.shape[1]:
    raise mapping.MappingError(f"{source}: img/pos_embedding has shape {pos.shape}, not "
                               "[1, g * g, width] of a square grid of patches.")
  return grid


def _embedding_sizes(tensors, image: dict, text: dict) -> dict:
  """tower -> (what sets it, the size of its embedding): its head's output, or
  without a head its width."""
  out = {}
  for tower, short, sizes in (("image", "img", image), ("text", "txt", text)):
    kernel = tensors.get(f"{short}/head/kernel")
    out[tower] = ((f"{short}/head/kernel", kernel.shape[-1]) if kernel is not None
                  else (f"the {tower} width", sizes["width"]))
  return out


def _suggest(tensors) -> str:
  """A hint at the variant from the patch embedding's shape [p, p, 3, W]."""
  kernel = tensors.get("img/embedding/kernel")
  if kernel is None or np.ndim(kernel) != 4:
    return "e.g. variant='B/16'"
  p, width = kernel.shape[0], kernel.shape[-1]
  names = [n for n, sizes in families.VARIANTS.items()
           if sizes[0] == width]
  guess = " or ".join(f"'{n}/{p}'" for n in names) or f"sizes with width {width}, patch {p}"
  return f"{guess} by this file's patch embedding {tuple(kernel.shape)}"


def _describe(variant) -> str:
  return variant if isinstance(variant, str) else repr(dict(variant))


# ---- writing -------------------------------------------------------------------------

def to_arrays(imported: Imported, *, scan: bool, prefix: bool = True) -> dict[str, np.ndarray]:
  """An Imported SigLIP model -> big_vision name -> float32 array; `scan` stacks
  the blocks, `prefix` puts every name under `params/` (as released files)."""
  image = imported.model["towers"]["image"]
  if imported.family not in ("siglip", "siglip2") or image.get("kind") != "vit":
    raise ValueError(f"write takes a SigLIP model (families.siglip); this one is "
                     f"{imported.family!r}.")
  if image["pool"] not in ("gap", "cls", "map"):
    raise ValueError(f"big_vision's ViT pools by 'gap', 'tok' or 'map'; this model's "
                     f"pool={image['pool']!r} has no big_vision layout.")
  if image["pool"] == "cls" and image.get("cls_position"):
    raise ValueError("big_vision's class token has no position embedding of its own; this "
                     "model (cls_position=True) has one, which the .npz layout cannot hold.")
  tensors = mapping.write(imported.params, entries(imported.model))
  if scan:
    tensors = stack_blocks(tensors)
  return {("params/" if prefix else "") + name: value for name, value in tensors.items()}


def write(imported: Imported, path, *, scan: bool, prefix: bool = True) -> None:
  """Writes `imported` as a big_vision .npz (float32) at `path` (local or gs://)."""
  buffer = io.BytesIO()
  np.savez(buffer, **to_arrays(imported, scan=scan, prefix=prefix))
  paths.write_bytes(os.fspath(path), buffer.getvalue())
