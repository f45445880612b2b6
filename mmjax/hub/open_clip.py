"""open_clip checkpoints read into mmjax, without torch or open_clip.

  imported = open_clip.read("open_clip_pytorch_model.bin", model_name="ViT-B-32")
  imported = open_clip.read("model.safetensors", model_name="ViT-B-16-SigLIP")

The architecture comes from the open_clip model config named `model_name`: the
table below (the common released configs, as facts), else the JSON config of
an installed open_clip package (found, never imported), else `model_config`
(a dict or the path of an open_clip model config JSON, or of a hub
`open_clip_config.json`). Two families are covered:

  CLIP configs (open_clip's own VisionTransformer and TextTransformer): a class
    token with its own position, ln_pre, bias-free patch conv, nn.MultiheadAttention
    blocks, ln_post, `proj` [W, D] used as x @ proj; a causal text tower pooled at
    the largest id; QuickGELU under `quick_gelu` (the -quickgelu names: OpenAI's
    weights), else exact GELU; LayerNorm eps 1e-5.
  *-SigLIP* configs (CustomTextCLIP): a timm ViT trunk (patch conv with bias, no
    class token, attention-pool head, eps 1e-6) whose MLP activation is fixed by
    the timm model (exact GELU for most SigLIP 1 trunks, tanh GELU for a few:
    TIMM_TRUNKS), and open_clip's text tower without a causal mask, pooled at the
    last position, eps 1e-6, exact GELU unless `act_kwargs` asks for tanh (the
    SigLIP 2 configs). So a SigLIP 1 checkpoint run through open_clip computes
    exact GELU where big_vision computed tanh GELU; we compute what open_clip does.
"""

import importlib.util
import json
import math
import os
from typing import Mapping

import numpy as np

from mmjax.hub import families
from mmjax.hub import mapping
from mmjax.hub.open_clip_map import entries
from mmjax.hub.open_clip_configs import CONFIGS, TIMM_TRUNKS, TRUNK_KEY
from mmjax.hub import torch_files
from mmjax.hub.imported import Imported

# Tensors that carry no parameter: the causal-mask buffers some exports keep.
IGNORED = ("attn_mask", "text.attn_mask")

_MODEL_CONFIG_HELP = ("pass model_config= (a dict, or the path of an open_clip model config "
                      "JSON such as open_clip/model_configs/<name>.json or a hub "
                      "open_clip_config.json)")


# ---- finding the config ---------------------------------------------------------

def _installed_configs() -> str | None:
  """open_clip's model_configs directory, if the package is installed (not imported)."""
  try:
    spec = importlib.util.find_spec("open_clip")
  except (ImportError, ValueError):
    return None
  for root in (spec.submodule_search_locations or []) if spec else []:
    folder = os.path.join(root, "model_configs")
    if os.path.isdir(folder):
      return folder
  return None


def _load_json(path: str) -> dict:
  with open(path) as f:
    cfg = json.load(f)
  return cfg.get("model_cfg", cfg)  # a hub open_clip_config.json wraps the model config


def find_config(model_name: str, override: str | Mapping | None = None) -> dict:
  """The open_clip model config (its JSON layout) for model_name.

  override: a config dict or JSON path, used instead of any lookup.
  """
  if override is not None:
    return dict(override.get("model_cfg", override) if isinstance(override, Mapping)
                else _load_json(os.fspath(override)))
  name = model_name.replace("/", "-")  # open_clip accepts "ViT-B/32" for "ViT-B-32"
  if name in CONFIGS:
    return json.loads(json.dumps(CONFIGS[name]))  # a deep copy
  folder = _installed_configs()
  installed = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json")) if folder else []
  if name in installed:
    return _load_json(os.path.join(folder, f"{name}.json"))
  raise ValueError(
      f"unknown open_clip model name {model_name!r}. Known here: {sorted(CONFIGS)}"
      + (f"; and {len(installed)} from the installed open_clip package" if folder else "")
      + f". For another architecture, {_MODEL_CONFIG_HELP}.")


# ---- the config in mmjax's terms --------------------------------------------------

def _act(cfg: Mapping, quick_gelu: bool, what: str) -> str:
  """open_clip's activation for a tower it builds itself (not a timm trunk)."""
  kwargs = dict(cfg.get("act_kwargs") or {})
  approximate = kwargs.pop("approximate", "none")
  if kwargs or approximate not in ("none", "tanh") or (quick_gelu and approximate == "tanh"):
    raise ValueError(f"{what}.act_kwargs = {cfg.get('act_kwargs')} is not supported "
                     "(mmjax has quick_gelu, exact gelu and gelu approximate='tanh').")
  return "quick_gelu" if quick_gelu else "gelu_tanh" if approximate == "tanh" else "gelu"


def _eps(cfg: Mapping) -> float:
  return float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5))  # torch LayerNorm's default


# Settings whose computation mmjax reproduces only at these values.
_VISION_OK = {"attentional_pool": (False,), "no_ln_pre": (False,),
              "final_ln_after_pool": (False,), "pos_embed_type": ("learnable",),
              "pool_type": ("tok",), "ls_init_value": (None,), "block_type": (None, "default"),
              "qk_norm": (False,), "scaled_cosine_attn": (False,), "scale_heads": (False,),
              "scale_attn_inner": (False,), "scale_attn": (False,), "scale_fc": (False,)}
_TIMM_OK = {"timm_pool": ("map",), "timm_proj": ("none", "")}
_TEXT_OK = {"hf_model_name": (None,), "embed_cls": (False,), "ls_init_value": (None,),
            "block_type": (None, "default"), "qk_norm": (False,), "scaled_cosine_attn": (False,),
            "scale_heads": (False,), "scale_attn_inner": (False,), "scale_attn": (False,),
            "scale_fc": (False,), "pool_type": ("argmax", "last", "first")}


def _unsupported(cfg: Mapping, model_name: str) -> None:
  """Raises for config settings whose computation mmjax does not reproduce."""
  vision, text = cfg["vision_cfg"], cfg["text_cfg"]
  vision_ok = {**_VISION_OK, **(_TIMM_OK if vision.get("timm_model_name") else {})}
  bad = [f"vision_cfg.{k}={vision[k]!r}" for k, ok in vision_ok.items()
         if k in vision and vision[k] not in ok]
  bad += [f"text_cfg.{k}={text[k]!r}" for k, ok in _TEXT_OK.items()
          if k in text and text[k] not in ok]
  if vision.get("timm_model_name") and "timm_proj" not in vision:
    bad.append("vision_cfg.timm_proj='linear' (the default)")
  if isinstance(vision.get("layers"), (list, tuple)):
    bad.append("vision_cfg.layers is a list (a ModifiedResNet image tower)")
  if "multimodal_cfg" in cfg:
    bad.append("multimodal_cfg (a CoCa model)")
  if bad:
    raise ValueError(f"open_clip model {model_name!r}: mmjax does not compute these "
                     f"settings as open_clip does: {bad}.")


def _trunk_of(vision: Mapping) -> dict:
  name = vision["timm_model_name"]
  trunk = vision.get(TRUNK_KEY) or TIMM_TRUNKS.get(name)
  if trunk is None:
    raise ValueError(
        f"timm trunk {name!r} is not one mmjax knows ({sorted(TIMM_TRUNKS)}); describe it "
        f"in the config: vision_cfg[{TRUNK_KEY!r}] = {{'patch_size', 'width', 'depth', "
        f"'num_heads', 'mlp_ratio', 'act' ('gelu' | 'gelu_tanh')}}.")
  return dict(trunk)


def architecture(cfg: Mapping, model_name: str) -> dict:
  """The sizes mmjax needs from an open_clip config.

  Returns {"kind": "clip" | "siglip", "vision": ViT sizes + act + ln_eps,
  "text": sizes + act + ln_eps + pool + causal + proj + proj_bias, "embed_dim",
  "image_size" (the tower's), "config_image_size", "bias" (has logit_bias)}.
  """
  _unsupported(cfg, model_name)
  vision, text = cfg["vision_cfg"], cfg["text_cfg"]
  quick_gelu = bool(cfg.get("quick_gelu", False))
  size = families.square(vision.get("image_size", 224), "vision_cfg.image_size")
  if vision.get("timm_model_name"):
    kind, trunk = "siglip", _trunk_of(vision)
    v = {k: trunk[k] for k in ("patch_size", "width", "depth", "num_heads")}
    v.update(mlp_dim=int(trunk["width"] * trunk.get("mlp_ratio", 4.0)), act=trunk["act"],
             ln_eps=1e-6)  # timm ignores quick_gelu: its trunk fixes its own activation
  else:
    kind, width = "clip", int(vision.get("width", 768))
    v = {"patch_size": families.square(vision.get("patch_size", 16), "vision_cfg.patch_size"),
         "width": width, "depth": int(vision.get("layers", 12)),
         "num_heads": width // int(vision.get("head_width", 64)),
         "mlp_dim": int(width * vision.get("mlp_ratio", 4.0)),
         "act": _act(vision, quick_gelu, "vision_cfg"), "ln_eps": _eps(vision)}
  width = int(text.get("width", 512))
  t = {"vocab_size": int(text.get("vocab_size", 49408)),
       "context_length": int(text.get("context_length", 77)), "width": width,
       "depth": int(text.get("layers", 12)), "num_heads": int(text.get("heads", 8)),
       "mlp_dim": int(width * text.get("mlp_ratio", 4.0)),
       "act": _act(text, quick_gelu, "text_cfg"), "ln_eps": _eps(text),
       "pool": text.get("pool_type", "argmax"), "causal": not text.get("no_causal_mask", False),
       "mask_padding": bool(text.get("use_pad_mask")) and text.get("no_causal_mask", False),
       "pad_id": int(text.get("pad_id", 0)),
       "proj": text.get("proj_type", "linear") != "none",
       "proj_bias": bool(text.get("proj_bias", False))}
  # open_clip's conv patchifier drops the pixels past the last whole patch.
  tower_size = size // v["patch_size"] * v["patch_size"]
  return {"kind": kind, "vision": v, "text": t, "embed_dim": int(cfg["embed_dim"]),
          "image_size": tower_size, "config_image_size": size,
          "bias": cfg.get("init_logit_bias") is not None}


# ---- the reader ----------------------------------------------------------------------

def model_kwargs(arch: dict, scale: float, bias: float, pad_id: int) -> dict:
  """MultiTower kwargs computing what open_clip computes for `arch`.

  scale, bias: the checkpoint's exp(logit_scale) and logit_bias; pad_id: the
  tokenizer's (the towers attend to padding, so only `mask/text` outputs use it).
  """
  v = {k: arch["vision"][k] for k in ("patch_size", "width", "depth", "num_heads", "mlp_dim")}
  t = {k: arch["text"][k] for k in ("vocab_size", "context_length", "width", "depth",
                                    "num_heads", "mlp_dim")}
  t["pad_id"] = arch["text"]["pad_id"] if arch["text"]["mask_padding"] else pad_id
  if arch["kind"] == "clip":
    model = families.clip(v, t, embed_dim=arch["embed_dim"], scale=scale,
                          act=arch["vision"]["act"])
    if arch["bias"]:
      model["bias_init"] = float(bias)
  else:
    model = families.siglip(v, t, embed_dim=arch["embed_dim"], image_head=False,
                            text_head=arch["text"]["proj"], scale=scale, bias=bias)
    model["towers"]["text"]["proj_bias"] = arch["text"]["proj_bias"]
    if not arch["bias"]:
      model["bias_init"] = None
  # Each tower keeps its own activation and epsilon (SigLIP 2 via open_clip: an
  # exact-GELU timm trunk beside a tanh-GELU text tower).
  for name in ("image", "text"):
    src = arch["vision" if name == "image" else "text"]
    model["towers"][name].update(act=src["act"], ln_eps=src["ln_eps"])
  text = model["towers"]["text"]
  text.update(pool=arch["text"]["pool"], causal=arch["text"]["causal"],
              mask_padding=arch["text"]["mask_padding"])
  if arch["embed_dim"] != arch["vision"]["width"] and arch["kind"] == "siglip":
    raise ValueError(f"embed_dim {arch['embed_dim']} differs from the timm trunk's width "
                     f"{arch['vision']['width']}, but timm_proj='none' adds no projection.")
  if not arch["text"]["proj"] and arch["embed_dim"] != arch["text"]["width"]:
    raise ValueError(f"embed_dim {arch['embed_dim']} differs from the text width "
                     f"{arch['text']['width']}, but text_cfg.proj_type='none'.")
  return model


def family_of(model_name: str, cfg: Mapping, kind: str) -> str:
  """"clip", "siglip" or "siglip2" (Gemma vocabulary): what the recipes follow."""
  if kind == "clip":
    return "clip"
  names = (model_name + str(cfg["text_cfg"].get("hf_tokenizer_name", ""))).lower()
  return "siglip2" if "siglip2" in names else "siglip"


def tokenizer_file(directory: str, family: str) -> str | None:
  """The vocabulary beside a checkpoint: CLIP's BPE (.txt.gz, or vocab.json and
  merges.txt: their directory) or a sentencepiece model."""
  if family == "clip":
    if os.path.isfile(os.path.join(directory, "bpe_simple_vocab_16e6.txt.gz")):
      return os.path.join(directory, "bpe_simple_vocab_16e6.txt.gz")
    if all(os.path.isfile(os.path.join(directory, f)) for f in ("vocab.json", "merges.txt")):
      return directory
    return None
  for name in ("spiece.model", "tokenizer.model", "sentencepiece.model"):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  return None


def _checkpoint_in(directory: str) -> str:
  """The one checkpoint file of a local open_clip (hub) directory."""
  preferred = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
  for name in preferred:
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  found = sorted(f for f in os.listdir(directory)
                 if f.endswith((".safetensors", ".bin", ".pt", ".pth")))
  if len(found) != 1:
    raise FileNotFoundError(f"{directory}: expected one checkpoint ({', '.join(preferred)}, "
                            f"or a single .safetensors/.bin/.pt), found {found or 'none'}.")
  return os.path.join(directory, found[0])


def recipes(family: str, arch: dict, tokenizer: str | None) -> tuple[dict, dict]:
  """(text recipe, image recipe): mmjax.data.released_text / released_images presets."""
  from mmjax.data import released_images  # pylint: disable=g-import-not-at-top
  from mmjax.data import released_text  # pylint: disable=g-import-not-at-top
  length = arch["text"]["context_length"]
  if family == "clip":
    text = dict(released_text.preset("clip", file=tokenizer, length=length))
    image = released_images.preset("clip", arch["config_image_size"])
  else:  # SigLIP 2: Gemma's vocabulary, padded with 0 (SigLIP: c4_en / mc4, padded with 1)
    name = "open_clip_siglip2" if family == "siglip2" else "open_clip_siglip"
    text = dict(released_text.preset(name, file=tokenizer, length=length))
    image = released_images.preset("open_clip_siglip", arch["config_image_size"])
  return text, dict(image)


def read(path: str | os.PathLike, *, model_name: str | None = None,
         model_config: str | Mapping | None = None, tokenizer: str | None = None) -> Imported:
  """An open_clip checkpoint as an mmjax Imported.

  path: a state dict saved by torch.save (.pt / .bin, also a training checkpoint
    with one under "state_dict") or as .safetensors; or a directory holding one
    (open_clip_model.safetensors / open_clip_pytorch_model.bin, and maybe
    open_clip_config.json, used when model_config is None and model_name is
    not a known name).
  model_name: the open_clip model name it was trained as ("ViT-B-32",
    "ViT-B-16-SigLIP", ...; see CONFIGS); required unless model_config is given
    (or the directory has open_clip_config.json).
  model_config: an open_clip model config (dict or JSON path) for names not known.
  tokenizer: the vocabulary file; None looks beside the checkpoint.
  """
  path = os.fspath(path)
  directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
  if os.path.isdir(path):
    hub_config = os.path.join(path, "open_clip_config.json")
    if model_config is None and os.path.isfile(hub_config) and \
        (model_name or "").replace("/", "-") not in CONFIGS:
      model_config = hub_config
    path = _checkpoint_in(path)
  if not model_name and model_config is None:
    raise ValueError(f"{path}: an open_clip checkpoint does not name its architecture; pass "
                     f"model_name= (e.g. 'ViT-B-32', 'ViT-B-16-SigLIP'), or {_MODEL_CONFIG_HELP}.")
  model_name = model_name or "custom"
  cfg = find_config(model_name, model_config)
  arch = architecture(cfg, model_name)
  family = family_of(model_name, cfg, arch["kind"])
  if tokenizer is not None and not os.path.exists(tokenizer):
    raise FileNotFoundError(f"tokenizer={tokenizer!r} does not exist.")
  text, image = recipes(family, arch, tokenizer or tokenizer_file(directory, family))

  tensors = torch_files.load_state_dict(path)
  scale = math.exp(float(np.ravel(tensors.get("logit_scale", [math.log(10.0)]))[0]))
  bias = float(np.ravel(tensors.get("logit_bias", [0.0]))[0])
  model = model_kwargs(arch, scale, bias, text["pad_id"])
  expected = mapping.expected_shapes(model, arch["image_size"], arch["text"]["context_length"])
  params = mapping.read(tensors, entries(arch, tensors), expected, path, ignore=IGNORED,
                        what=f"open_clip {model_name}")
  notes = []
  if arch["image_size"] != arch["config_image_size"]:
    notes.append(f"{model_name}: images of {arch['config_image_size']} px; open_clip's patch "
                 f"conv uses only the top-left {arch['image_size']} px (whole patches), so crop "
                 f"preprocessed images to that before the image tower.")
  return Imported(family=family, model=model, params=params, image_size=arch["image_size"],
                  text=text, image=image, source=f"open_clip:{model_name}:{path}", notes=notes)

