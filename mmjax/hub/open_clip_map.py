"""open_clip state-dict names <-> mmjax's MultiTower params, as one declarative
map (mmjax/hub/mapping.py) over the architecture `open_clip.architecture` reads
from the model config.

CLIP configs: open_clip's own towers (nn.MultiheadAttention's fused in_proj,
`proj` used as x @ proj, a class token with its own position). *-SigLIP*
configs: a timm ViT trunk under `visual.trunk.` (fused qkv, an attention-pool
head with separate q and kv) and open_clip's text tower under `text.`.
"""

from typing import Mapping

import numpy as np

from mmjax.hub import mapping
from mmjax.hub.mapping import entry


def _reshaped(ours: str, theirs: str, ours_shape: tuple, theirs_shape: tuple) -> mapping.Entry:
  return entry(ours, theirs, lambda a: a.reshape(ours_shape),
               lambda a: (a.reshape(theirs_shape),))


def _blocks(ours: str, theirs: str, depth: int, heads: int, timm: bool) -> list:
  """Pre-LN transformer blocks: open_clip's ResidualAttentionBlock or timm's Block."""
  out = []
  for i in range(depth):
    o, t = f"{ours}/block{i}", f"{theirs}.{i}"
    if timm:
      names = ("norm1", "norm2", "mlp.fc1", "mlp.fc2", "attn.proj")
      out += mapping.torch_qkv_fused(f"{o}/attn/qkv", f"{t}.attn.qkv.weight",
                                     f"{t}.attn.qkv.bias", heads)
    else:
      names = ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj", "attn.out_proj")
      out += mapping.torch_qkv_fused(f"{o}/attn/qkv", f"{t}.attn.in_proj_weight",
                                     f"{t}.attn.in_proj_bias", heads)
    ln1, ln2, fc1, fc2, proj = names
    out += mapping.torch_out_proj(f"{o}/attn/out", f"{t}.{proj}", heads)
    out += mapping.torch_layernorm(f"{o}/ln1", f"{t}.{ln1}")
    out += mapping.torch_layernorm(f"{o}/ln2", f"{t}.{ln2}")
    out += mapping.torch_linear(f"{o}/mlp/fc1", f"{t}.{fc1}")
    out += mapping.torch_linear(f"{o}/mlp/fc2", f"{t}.{fc2}")
  return out


def _clip_vision(arch: dict) -> list:
  v, w = arch["vision"], arch["vision"]["width"]
  positions = (arch["image_size"] // v["patch_size"]) ** 2 + 1
  return [mapping.torch_patch_conv("image_tower/embedding/kernel", "visual.conv1.weight"),
          _reshaped("image_tower/cls", "visual.class_embedding", (1, 1, w), (w,)),
          _reshaped("image_tower/pos_embedding", "visual.positional_embedding",
                    (1, positions, w), (positions, w)),
          *mapping.torch_layernorm("image_tower/ln_pre", "visual.ln_pre"),
          *_blocks("image_tower/encoder", "visual.transformer.resblocks", v["depth"],
                   v["num_heads"], timm=False),
          *mapping.torch_layernorm("image_tower/encoder/ln_final", "visual.ln_post"),
          entry("image_proj/kernel", "visual.proj")]


def _timm_vision(arch: dict) -> list:
  v, p = arch["vision"], "visual.trunk"
  heads, m = v["num_heads"], "image_tower/map_head"
  q_read, q_write = mapping.split_heads_in(heads)
  return [mapping.torch_patch_conv("image_tower/embedding/kernel", f"{p}.patch_embed.proj.weight"),
          entry("image_tower/embedding/bias", f"{p}.patch_embed.proj.bias"),
          entry("image_tower/pos_embedding", f"{p}.pos_embed"),
          *_blocks("image_tower/encoder", f"{p}.blocks", v["depth"], heads, timm=True),
          *mapping.torch_layernorm("image_tower/encoder/ln_final", f"{p}.norm"),
          entry(f"{m}/probe", f"{p}.attn_pool.latent"),
          entry(f"{m}/q/kernel", f"{p}.attn_pool.q.weight", q_read, q_write),
          entry(f"{m}/q/bias", f"{p}.attn_pool.q.bias", lambda b: b.reshape(heads, -1),
                lambda b: (b.reshape(-1),)),
          *mapping.torch_qkv_fused(f"{m}/kv", f"{p}.attn_pool.kv.weight",
                                   f"{p}.attn_pool.kv.bias", heads, parts=2),
          *mapping.torch_out_proj(f"{m}/out", f"{p}.attn_pool.proj", heads),
          *mapping.torch_layernorm(f"{m}/ln", f"{p}.attn_pool.norm"),
          *mapping.torch_linear(f"{m}/mlp/fc1", f"{p}.attn_pool.mlp.fc1"),
          *mapping.torch_linear(f"{m}/mlp/fc2", f"{p}.attn_pool.mlp.fc2")]


def _text(arch: dict, prefix: str) -> list:
  """prefix: "" (CLIP: the text tower's tensors at the top level) or "text."."""
  t = arch["text"]
  out = [entry("text_tower/token_embedding", f"{prefix}token_embedding.weight"),
         entry("text_tower/pos_embedding", f"{prefix}positional_embedding"),
         *_blocks("text_tower/encoder", f"{prefix}transformer.resblocks", t["depth"],
                  t["num_heads"], timm=False),
         *mapping.torch_layernorm("text_tower/encoder/ln_final", f"{prefix}ln_final")]
  if t["proj"] and t["proj_bias"]:  # an nn.Linear
    out += mapping.torch_linear("text_proj", f"{prefix}text_projection")
  elif t["proj"]:  # a bare [W, D] parameter, used as x @ proj
    out.append(entry("text_proj/kernel", f"{prefix}text_projection"))
  return out


def _scalars(arch: dict, tensors: Mapping) -> list:
  """logit_scale (and logit_bias): [] or [1] in the file (nonscalar_logit_scale), [] ours."""
  names = {"log_scale": "logit_scale", **({"bias": "logit_bias"} if arch["bias"] else {})}
  return [_reshaped(ours, theirs, (), np.shape(tensors.get(theirs, np.zeros(()))))
          for ours, theirs in names.items()]


def entries(arch: dict, tensors: Mapping[str, np.ndarray]) -> list[mapping.Entry]:
  """The weight map of `arch` (architecture()), in the layout `tensors` use.

  A CLIP checkpoint's text tower is usually at the top level; one trained with
  open_clip's custom text tower has it under "text."; both are read.
  """
  prefix = "" if arch["kind"] == "clip" else "text."
  if "text.positional_embedding" in tensors:
    prefix = "text."
  elif "positional_embedding" in tensors:
    prefix = ""
  vision = _clip_vision(arch) if arch["kind"] == "clip" else _timm_vision(arch)
  return vision + _text(arch, prefix) + _scalars(arch, tensors)
