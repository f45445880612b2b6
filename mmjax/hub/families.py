"""The model families of released checkpoints, as MultiTower configs.

Each function returns the kwargs of `mmjax.models.multi_tower.MultiTower` that
compute what the original family computes; the readers fill in the sizes from
the checkpoint and the name the user gave.

  SigLIP / SigLIP 2 (big_vision): ViT with a MAP head, patch bias, tanh GELU,
    LayerNorm eps 1e-6, the pooled image features are the embedding; a
    bidirectional text transformer with no attention mask, pooled at the last
    position (captions padded to a fixed length), then a Dense with bias.
  CLIP (OpenAI, open_clip, HF CLIPModel): ViT with a class token that has its
    own position, ln_pre, no patch bias; a causal text transformer pooled at
    the end-of-text token (the largest id); bias-free projections; quick_gelu
    (OpenAI weights) or exact GELU; LayerNorm eps 1e-5.
"""

import math

# big_vision's ViT sizes by variant letter: width, depth, mlp_dim, num_heads.
VARIANTS = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    # Shape-optimised giants (SigLIP 2's g-opt/16 pairs its image tower with a
    # So400m text tower).
    "g-opt": (1536, 40, 6144, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}

# Large enough never to clip a released scale (SigLIP's t is learned unclipped).
UNCLIPPED = 1e6


def decode_variant(variant: str) -> dict:
  """"B/16" -> {"width": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12,
  "patch_size": 16}; "B" (a text tower) leaves patch_size out."""
  name, _, patch = variant.partition("/")
  if name not in VARIANTS:
    raise ValueError(f"unknown big_vision variant {variant!r}; the sizes known are "
                     f"{sorted(VARIANTS)} (e.g. 'B/16', 'So400m/14').")
  width, depth, mlp_dim, heads = VARIANTS[name]
  out = {"width": width, "depth": depth, "mlp_dim": mlp_dim, "num_heads": heads}
  if patch:
    out["patch_size"] = int(patch)
  return out


def siglip(image: dict, text: dict, *, embed_dim: int, image_head: bool, text_head: bool,
           scale: float, bias: float, image_pool: str = "map",
           act: str = "gelu_tanh", ln_eps: float = 1e-6) -> dict:
  """MultiTower kwargs of a SigLIP / SigLIP 2 model.

  image: ViT sizes (width, depth, mlp_dim, num_heads, patch_size). text: sizes
  plus vocab_size, context_length and pad_id. image_head / text_head: whether
  the tower ends in a Dense (with bias) into the embedding (big_vision's
  `img/head`, `txt/head`); without one its pooled features are the embedding.
  scale, bias: the logit scale (exp(t)) and bias (b).
  """
  common = {"act": act, "ln_eps": ln_eps}
  image_tower = {"kind": "vit", **image, "pool": image_pool, "patch_bias": True, **common,
                 "proj": image_head, "proj_bias": True}
  text_tower = {"kind": "transformer", **text, "causal": False, "pool": "last",
                "mask_padding": False, **common, "proj": text_head, "proj_bias": True}
  return {"towers": {"image": image_tower, "text": text_tower}, "embed_dim": embed_dim,
          "temperature_init": float(scale), "max_temperature": UNCLIPPED,
          "bias_init": float(bias)}


def clip(image: dict, text: dict, *, embed_dim: int, scale: float, act: str,
         ln_eps: float = 1e-5, max_temperature: float = 100.0) -> dict:
  """MultiTower kwargs of a CLIP model (OpenAI / open_clip / HF CLIPModel).

  image: ViT sizes. text: sizes plus vocab_size, context_length and pad_id.
  scale: exp(logit_scale). act: "quick_gelu" (OpenAI weights) or "gelu".
  """
  common = {"act": act, "ln_eps": ln_eps}
  image_tower = {"kind": "vit", **image, "pool": "cls", "cls_position": True,
                 "ln_pre": True, "patch_bias": False, **common}
  text_tower = {"kind": "transformer", **text, "causal": True, "pool": "argmax",
                "mask_padding": False, **common}
  return {"towers": {"image": image_tower, "text": text_tower}, "embed_dim": embed_dim,
          "temperature_init": float(scale), "bias_init": None,
          "max_temperature": max(max_temperature, float(scale))}


def log_scale(scale: float) -> float:
  return math.log(scale)


def square(value, what: str) -> int:
  """An int, or [n, n] -> n (configs give sizes both ways); mmjax's ViT takes
  square images and patches only."""
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f"{what}={list(value)}: mmjax's ViT takes square sizes only.")
    value = value[0]
  return int(value)
