"""Hugging Face SiglipModel / Siglip2Model / CLIPModel tensor names <-> mmjax's
MultiTower params, as one declarative map per family (mmjax/hub/mapping.py).

HF keeps torch layouts: nn.Linear weights [out, in], separate q / k / v
projections per block (fused into our qkv here), nn.MultiheadAttention's
in_proj for SigLIP's MAP head (split between our q and kv with mapping.rows),
Conv2d patch embeddings [W, C, p, p] (SiglipModel, CLIPModel) or an nn.Linear
over (row, column, channel)-flattened patches (Siglip2Model).
"""

import numpy as np

from mmjax.hub import mapping


def _scalar(ours: str, theirs: str, shape: tuple) -> mapping.Entry:
  """Our [] scalar <-> their `shape` tensor of one element."""
  return mapping.entry(ours, theirs, lambda x: x.reshape(()),
                       lambda x: (np.reshape(x, shape),))


def _in_proj(ours: str, theirs: str, width: int, heads: int) -> list[mapping.Entry]:
  """nn.MultiheadAttention's in_proj (weight [3W, W], bias [3W]) as our MAP
  head's q (kernel [W, H, Dh], bias [H, Dh]) and kv ([W, 2, H, Dh], [2, H, Dh])."""
  q_read, q_write = mapping.split_heads_in(heads)
  q = [mapping.entry(f"{ours}/q/kernel", f"{theirs}.in_proj_weight", q_read, q_write),
       mapping.entry(f"{ours}/q/bias", f"{theirs}.in_proj_bias",
                     lambda b: b.reshape(heads, -1), lambda b: (b.reshape(-1),))]
  kv = mapping.torch_qkv_fused(f"{ours}/kv", f"{theirs}.in_proj_weight",
                               f"{theirs}.in_proj_bias", heads, parts=2)
  total = 3 * width
  return ([mapping.rows(e, 0, width, total) for e in q] +
          [mapping.rows(e, width, total, total) for e in kv])


def _encoder(ours: str, theirs: str, depth: int, heads: int, final_ln: str) -> list:
  """HF encoder.layers.{i} (+ its final LayerNorm) as our encoder/block{i} (+ ln_final)."""
  out = []
  for i in range(depth):
    o, t = f"{ours}/block{i}", f"{theirs}.layers.{i}"
    out += mapping.torch_layernorm(f"{o}/ln1", f"{t}.layer_norm1")
    out += mapping.torch_qkv_separate(
        f"{o}/attn/qkv", [f"{t}.self_attn.{n}_proj" for n in "qkv"], heads)
    out += mapping.torch_out_proj(f"{o}/attn/out", f"{t}.self_attn.out_proj", heads)
    out += mapping.torch_layernorm(f"{o}/ln2", f"{t}.layer_norm2")
    out += mapping.torch_linear(f"{o}/mlp/fc1", f"{t}.mlp.fc1")
    out += mapping.torch_linear(f"{o}/mlp/fc2", f"{t}.mlp.fc2")
  return out + mapping.torch_layernorm(f"{ours}/ln_final", final_ln)


def _positions(ours: str, theirs: str) -> mapping.Entry:
  """An nn.Embedding of positions [N, W] as our ViT's [1, N, W]."""
  return mapping.entry(ours, theirs, lambda w: w[None], lambda p: (p[0],))


def entries(family: str, model: dict) -> list[mapping.Entry]:
  """The map of `family` ("siglip" | "siglip2" | "clip") at the sizes in
  MultiTower kwargs `model`: our param paths <-> HF tensor names."""
  image, text = model["towers"]["image"], model["towers"]["text"]
  v, t = "vision_model", "text_model"
  out = _encoder("image_tower/encoder", f"{v}.encoder", image["depth"], image["num_heads"],
                 f"{v}.post_layernorm")
  out += _encoder("text_tower/encoder", f"{t}.encoder", text["depth"], text["num_heads"],
                  f"{t}.final_layer_norm")
  out += [mapping.entry("text_tower/token_embedding", f"{t}.embeddings.token_embedding.weight"),
          mapping.entry("text_tower/pos_embedding", f"{t}.embeddings.position_embedding.weight"),
          _positions("image_tower/pos_embedding", f"{v}.embeddings.position_embedding.weight")]
  patch = f"{v}.embeddings.patch_embedding"
  if family == "clip":
    out += [mapping.torch_patch_conv("image_tower/embedding/kernel", f"{patch}.weight"),
            mapping.entry("image_tower/cls", f"{v}.embeddings.class_embedding",
                          lambda c: c[None, None], lambda c: (c[0, 0],)),
            *mapping.torch_layernorm("image_tower/ln_pre", f"{v}.pre_layrnorm"),
            *mapping.torch_linear("image_proj", "visual_projection", bias=False),
            *mapping.torch_linear("text_proj", "text_projection", bias=False),
            _scalar("log_scale", "logit_scale", ())]
    return out
  if family == "siglip2":  # a Linear over (row, col, channel)-flattened patches
    out += mapping.torch_linear("image_tower/embedding", patch)
  else:
    out += [mapping.torch_patch_conv("image_tower/embedding/kernel", f"{patch}.weight"),
            mapping.entry("image_tower/embedding/bias", f"{patch}.bias")]
  head, h = "image_tower/map_head", f"{v}.head"
  out += [mapping.entry(f"{head}/probe", f"{h}.probe"),
          *_in_proj(head, f"{h}.attention", image["width"], image["num_heads"]),
          *mapping.torch_out_proj(f"{head}/out", f"{h}.attention.out_proj", image["num_heads"]),
          *mapping.torch_layernorm(f"{head}/ln", f"{h}.layernorm"),
          *mapping.torch_linear(f"{head}/mlp/fc1", f"{h}.mlp.fc1"),
          *mapping.torch_linear(f"{head}/mlp/fc2", f"{h}.mlp.fc2"),
          *mapping.torch_linear("text_proj", f"{t}.head"),
          _scalar("log_scale", "logit_scale", (1,)),
          _scalar("bias", "logit_bias", (1,))]
  return out
