"""Hugging Face transformers checkpoints of SigLIP, SigLIP 2 and CLIP, read into mmjax.

  imported = hf.read("path/to/siglip-base-patch16-224")   # a local model directory

A directory holds config.json and model.safetensors (or the sharded form,
model.safetensors.index.json and its shards), as `save_pretrained` writes
them. The architecture ("architectures" / "model_type" in config.json) picks
the family; its sizes come from config.json, with transformers' defaults for
the keys a config leaves out (hub configs are often written as a diff from the
defaults); every tensor is checked against them by `mapping.read`.

Each family is one declarative map (`entries`) from mmjax params to the HF
tensor names; `export_hf` writes through the same maps, so reading and writing
cannot drift apart.

What mmjax computes, and where it differs from transformers:
  SiglipModel: the same (text pooled at the last position, no attention mask:
    captions are padded to the full length, as the HF processor's
    padding="max_length" does).
  Siglip2Model: its vision tower is a NaFlex model (patches of any aspect ratio,
    position embeddings resized per image). mmjax runs it at one fixed square
    resolution, sqrt(num_patches) * patch_size pixels, where the resize is the
    identity; variable aspect ratios and patch counts are not reproduced.
  CLIPModel: HF pools the text at the first end-of-text token (or, for the
    legacy eos_token_id == 2, at the largest id); mmjax pools at the largest
    id, which is the same position when eos_token_id is the last id of the
    vocabulary (49407 for CLIP's). Other configs are refused.
"""

import json
import math
import os

import numpy as np

from mmjax.hub import families
from mmjax.hub import mapping
from mmjax.hub.hf_map import entries
from mmjax.hub.imported import Imported

# architecture -> mmjax family (what the text and image recipes follow).
ARCHITECTURES = {"SiglipModel": "siglip", "Siglip2Model": "siglip2", "CLIPModel": "clip"}
_BY_MODEL_TYPE = {"siglip": "SiglipModel", "siglip2": "Siglip2Model", "clip": "CLIPModel"}

# HF hidden_act -> mmjax activation. gelu_new is the same tanh approximation as
# gelu_pytorch_tanh (an older, slower implementation of it).
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu",
               "quick_gelu": "quick_gelu"}

# transformers' config defaults (configuration_{siglip,siglip2,clip}.py), for the
# keys a config.json leaves out.
_SIGLIP_TEXT = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072,
                "num_hidden_layers": 12, "num_attention_heads": 12,
                "max_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
                "layer_norm_eps": 1e-6, "pad_token_id": 1, "bos_token_id": 49406,
                "eos_token_id": 49407, "projection_size": None}
_SIGLIP_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "num_channels": 3, "image_size": 224,
                  "patch_size": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                  "vision_use_head": True}
DEFAULTS = {
    "siglip": (_SIGLIP_TEXT, _SIGLIP_VISION, {}),
    "siglip2": (_SIGLIP_TEXT, {**{k: v for k, v in _SIGLIP_VISION.items() if k != "image_size"},
                               "num_patches": 256}, {}),
    "clip": ({"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
              "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "pad_token_id": 1,
              "bos_token_id": 49406, "eos_token_id": 49407},
             {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
              "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
             {"projection_dim": 512}),
}

# Buffers some transformers versions saved beside the weights.
IGNORE = ("*.position_ids",)

# transformers' own tokenizers and processors (not big_vision's, which differ in
# case and punctuation handling: mmjax.data.released_text).
TEXT_RECIPES = {"siglip": "hf_siglip", "siglip2": "hf_siglip2", "clip": "clip"}
IMAGE_RECIPES = {"siglip": "hf_siglip", "siglip2": "hf_siglip", "clip": "hf_clip"}
# Tokenizer files as HF model directories hold them, by family.
TOKENIZER_FILES = {"siglip": ("spiece.model",), "siglip2": ("tokenizer.model",),
                   "clip": ("vocab.json", "merges.txt")}


class UnsupportedArchitecture(ValueError):
  """config.json names a model this reader does not map."""


# ---- config.json ----------------------------------------------------------------

def load_config(path: str) -> dict:
  """The raw config.json of model directory `path`."""
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{file} not found: a Hugging Face model directory holds "
                            "config.json and model.safetensors (save_pretrained's layout).")
  with open(file) as f:
    return json.load(f)


def architecture(config: dict, source: str = "config.json") -> str:
  """"SiglipModel" | "Siglip2Model" | "CLIPModel" from config["architectures"]
  (or "model_type" when that is absent); anything else raises."""
  names = config.get("architectures") or []
  if not names and config.get("model_type") in _BY_MODEL_TYPE:
    names = [_BY_MODEL_TYPE[config["model_type"]]]
  for name in names:
    if name in ARCHITECTURES:
      return name
  what = names or [config.get("model_type")]
  raise UnsupportedArchitecture(
      f"{source} is a {', '.join(map(str, what))} (model_type "
      f"{config.get('model_type')!r}); mmjax reads {', '.join(ARCHITECTURES)} only.")


def sub_configs(config: dict, family: str) -> tuple[dict, dict, dict]:
  """(text, vision, top level) with transformers' defaults filled in. Old CLIP
  configs keep their values in text_config_dict / vision_config_dict, which
  take precedence, as transformers does it."""
  text_default, vision_default, top_default = DEFAULTS[family]
  text = {**text_default, **(config.get("text_config") or {}),
          **(config.get("text_config_dict") or {})}
  vision = {**vision_default, **(config.get("vision_config") or {}),
            **(config.get("vision_config_dict") or {})}
  top = {**top_default, **{k: v for k, v in config.items() if k in top_default}}
  if family != "clip" and text.get("projection_size") is None:
    text["projection_size"] = text["hidden_size"]
  return text, vision, top


def activation(cfg: dict, which: str) -> str:
  act = cfg["hidden_act"]
  if act not in ACTIVATIONS:
    raise ValueError(f"config.json {which} hidden_act={act!r} has no mmjax equivalent; "
                     f"supported: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[act]


def _tower_sizes(cfg: dict) -> dict:
  return {"width": cfg["hidden_size"], "depth": cfg["num_hidden_layers"],
          "mlp_dim": cfg["intermediate_size"], "num_heads": cfg["num_attention_heads"]}


def image_size(family: str, vision: dict) -> int:
  """The square side mmjax runs the image tower at (Siglip2: the full grid)."""
  patch = families.square(vision["patch_size"], "vision_config.patch_size")
  if family != "siglip2":
    # The patch convolution reads only whole patches: So400m/14 at 384 px sees
    # the top-left 378 (ReleasedModel.encode_image crops the same way).
    side = families.square(vision["image_size"], "vision_config.image_size")
    return side - side % patch
  side = math.isqrt(vision["num_patches"])
  if side * side != vision["num_patches"]:
    raise ValueError(f"vision_config.num_patches={vision['num_patches']} is not a square; "
                     "mmjax runs SigLIP 2 at a square grid of sqrt(num_patches) patches.")
  return side * patch


def _eos_id(text: dict) -> int:
  eos = text["eos_token_id"]
  if isinstance(eos, (list, tuple)):
    if len(eos) != 1:
      raise ValueError(f"text_config.eos_token_id={eos}: CLIP pools at one end-of-text id.")
    eos = eos[0]
  return int(eos)


def check_clip_pooling(text: dict) -> None:
  """mmjax's CLIP pools at the largest id; HF at the first eos (or argmax for
  the legacy eos_token_id == 2). Equal only when eos is the vocabulary's last id."""
  eos = _eos_id(text)
  if eos != 2 and eos != text["vocab_size"] - 1:
    raise ValueError(
        f"text_config.eos_token_id={eos} is not the last id of the vocabulary "
        f"({text['vocab_size'] - 1}): transformers pools CLIP's text at the first eos token, "
        "mmjax at the largest id, which then differ. mmjax reads CLIP checkpoints whose eos "
        "is the last id (as OpenAI's 49407 is).")


def model_kwargs(family: str, text: dict, vision: dict, top: dict, *, pad_id: int,
                 scale: float = 1.0, bias: float = 0.0) -> dict:
  """MultiTower kwargs of the HF model with these (defaults-filled) configs."""
  image = {**_tower_sizes(vision), "patch_size": families.square(vision["patch_size"],
                                                         "vision_config.patch_size")}
  words = {**_tower_sizes(text), "vocab_size": text["vocab_size"],
           "context_length": text["max_position_embeddings"], "pad_id": int(pad_id)}
  if family == "clip":
    check_clip_pooling(text)
    kwargs = families.clip(image, words, embed_dim=top["projection_dim"], scale=scale,
                           act=activation(text, "text_config"), ln_eps=text["layer_norm_eps"])
  else:
    if not vision["vision_use_head"]:
      raise ValueError(f"{family}: vision_config.vision_use_head=false "
                       "leaves the model without an image embedding (no pooler output).")
    if text["projection_size"] != vision["hidden_size"]:
      raise ValueError(
          f"text_config.projection_size={text['projection_size']} differs from "
          f"vision_config.hidden_size={vision['hidden_size']}: SigLIP's image embedding is "
          "its pooled features, so the two must be equal.")
    kwargs = families.siglip(image, words, embed_dim=text["projection_size"],
                             image_head=False, text_head=True, scale=scale, bias=bias,
                             act=activation(text, "text_config"),
                             ln_eps=text["layer_norm_eps"])
  # The towers' activations and epsilons are configured apart in HF.
  kwargs["towers"]["image"].update(act=activation(vision, "vision_config"),
                                   ln_eps=vision["layer_norm_eps"])
  return kwargs


# ---- safetensors -------------------------------------------------------------------

def safetensors_files(path: str) -> list[str]:
  """model.safetensors, or the shards listed in model.safetensors.index.json."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    files = [os.path.join(path, s) for s in shards]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
      raise FileNotFoundError(f"{index} lists shards that are not in {path}: {absent}")
    return files
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  bins = [f for f in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
          if os.path.isfile(os.path.join(path, f))]
  hint = (f" It holds {bins}: convert it with transformers (from_pretrained, then "
          "save_pretrained(dir, safe_serialization=True))." if bins else "")
  raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in "
                          f"{path}.{hint}")


def load_tensors(files: list[str]) -> dict[str, np.ndarray]:
  """name -> float32 array, over all files. bfloat16 tensors (which NumPy cannot
  hold) come through safetensors' flax reader; the rest through its NumPy one."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = {}
  for file in files:
    with safe_open(file, framework="np") as f:
      bf16 = [k for k in f.keys() if f.get_slice(k).get_dtype() == "BF16"]
      for key in f.keys():
        if key not in bf16:
          out[key] = np.asarray(f.get_tensor(key), np.float32)
    if bf16:
      with safe_open(file, framework="flax") as f:
        for key in bf16:
          out[key] = np.asarray(f.get_tensor(key), np.float32)
  return out


# ---- recipes -----------------------------------------------------------------------

def _tokenizer_file(path: str, family: str, tokenizer: str | None) -> str | None:
  """The user's file, else the one beside the checkpoint (CLIP: the directory
  holding vocab.json and merges.txt), else None."""
  if tokenizer is not None:
    return tokenizer
  names = TOKENIZER_FILES[family]
  if all(os.path.isfile(os.path.join(path, n)) for n in names):
    return os.path.join(path, names[0]) if len(names) == 1 else path
  return None


def recipes(family: str, path: str, tokenizer: str | None, length: int,
            size: int) -> tuple[dict, dict]:
  """(text recipe, image recipe) of the family (mmjax.data.released_text / _images)."""
  from mmjax.data import released_images  # pylint: disable=g-import-not-at-top
  from mmjax.data import released_text  # pylint: disable=g-import-not-at-top
  text = released_text.preset(TEXT_RECIPES[family], file=_tokenizer_file(path, family, tokenizer),
                              length=length)
  return dict(text), dict(released_images.preset(IMAGE_RECIPES[family], size))


# ---- the reader --------------------------------------------------------------------

def read(path: str, *, tokenizer: str | None = None) -> Imported:
  """A Hugging Face SiglipModel / Siglip2Model / CLIPModel directory -> Imported.

  path: a local directory with config.json and model.safetensors (or the
    sharded form). tokenizer: the tokenizer file to use instead of the one
    found beside the checkpoint (spiece.model, tokenizer.model, or CLIP's
    vocab.json + merges.txt).

  Raises UnsupportedArchitecture for other models, ValueError for a config
  mmjax cannot compute exactly, mapping.MappingError naming each tensor that
  is missing, left over or of another shape than config.json implies.
  """
  config = load_config(path)
  arch = architecture(config, os.path.join(path, "config.json"))
  family = ARCHITECTURES[arch]
  text_cfg, vision_cfg, top = sub_configs(config, family)
  size = image_size(family, vision_cfg)
  # Preprocessing resizes to the configured side (384), the tower reads `size` (378).
  text, image = recipes(family, path, tokenizer, text_cfg["max_position_embeddings"],
                        families.square(vision_cfg.get("image_size", size), "vision_config.image_size")
                        if family != "siglip2" else size)
  pad_id = text.get("pad_id")
  pad_id = text_cfg["pad_token_id"] if pad_id is None else pad_id
  shape_only = model_kwargs(family, text_cfg, vision_cfg, top, pad_id=pad_id or 0)
  family_entries = entries(family, shape_only)
  expected = mapping.expected_shapes(shape_only, size, text_cfg["max_position_embeddings"])
  files = safetensors_files(path)
  what = (f"a {arch} of this config.json (image {vision_cfg['hidden_size']}x"
          f"{vision_cfg['num_hidden_layers']}, text {text_cfg['hidden_size']}x"
          f"{text_cfg['num_hidden_layers']}, vocab {text_cfg['vocab_size']})")
  params = mapping.read(load_tensors(files), family_entries, expected, path,
                        ignore=IGNORE, what=what)
  scale = float(np.exp(params["log_scale"]))
  bias = float(params["bias"]) if "bias" in params else 0.0
  model = model_kwargs(family, text_cfg, vision_cfg, top, pad_id=pad_id or 0,
                       scale=scale, bias=bias)
  notes = [f"read {arch} from {len(files)} safetensors file(s)"]
  if family == "siglip2":
    grid = math.isqrt(vision_cfg["num_patches"])
    notes.append(f"SigLIP 2 (NaFlex) runs at a fixed {size}x{size} ({grid}x{grid} patches); "
                 "other aspect ratios and patch counts are not reproduced")
  return Imported(family=family, model=model, params=params, image_size=size, text=text,
                  image=image, source=f"hf:{path}", notes=notes)
