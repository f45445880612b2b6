"""big_vision's SigLIP parameter tree <-> mmjax's MultiTower params, as one map.

Names are big_vision's in the per-layer layout without the `params/` prefix
(mmjax/hub/big_vision.py normalises files to it): `img/` (ViT: `embedding`,
`pos_embedding`, `Transformer/encoderblock_<i>/...`, `Transformer/encoder_norm`,
`MAPHead_0` or `cls`, optional `head`), `txt/` (`Embed_0`, `pos_embedding`,
`Encoder_0/...`, optional `head`), and the scalars `t` (log scale) and `b`.
big_vision keeps query, key and value as separate DenseGenerals; mmjax fuses
them, so those entries stack and unstack.
"""

from typing import Mapping

import numpy as np

from mmjax.hub.mapping import entry


def _stack_read(axis):
  return lambda *xs: np.stack(xs, axis=axis)


def _stack_write(axis):
  return lambda x: tuple(np.moveaxis(x, axis, 0))


def _dense(ours: str, theirs: str) -> list:
  return [entry(f"{ours}/kernel", f"{theirs}/kernel"), entry(f"{ours}/bias", f"{theirs}/bias")]


def _layernorm(ours: str, theirs: str) -> list:
  return [entry(f"{ours}/scale", f"{theirs}/scale"), entry(f"{ours}/bias", f"{theirs}/bias")]


def _fused(ours: str, theirs: str, parts: tuple) -> list:
  """big_vision's separate query/key/value DenseGeneral ([W, H, Dh], [H, Dh]) as
  our fused kernel [W, len(parts), H, Dh] and bias [len(parts), H, Dh]."""
  return [entry(f"{ours}/kernel", [f"{theirs}/{p}/kernel" for p in parts],
                _stack_read(1), _stack_write(1)),
          entry(f"{ours}/bias", [f"{theirs}/{p}/bias" for p in parts],
                _stack_read(0), _stack_write(0))]


def _mlp(ours: str, theirs: str) -> list:
  return _dense(f"{ours}/fc1", f"{theirs}/Dense_0") + _dense(f"{ours}/fc2", f"{theirs}/Dense_1")


def _encoder(ours: str, theirs: str, depth: int) -> list:
  out = []
  for i in range(depth):
    o, t = f"{ours}/block{i}", f"{theirs}/encoderblock_{i}"
    attn = f"{t}/MultiHeadDotProductAttention_0"
    out += _layernorm(f"{o}/ln1", f"{t}/LayerNorm_0")
    out += _fused(f"{o}/attn/qkv", attn, ("query", "key", "value"))
    out += _dense(f"{o}/attn/out", f"{attn}/out")
    out += _layernorm(f"{o}/ln2", f"{t}/LayerNorm_1")
    out += _mlp(f"{o}/mlp", f"{t}/MlpBlock_0")
  return out + _layernorm(f"{ours}/ln_final", f"{theirs}/encoder_norm")


def entries(model: Mapping) -> list:
  """The map between MultiTower params of a families.siglip `model` and the
  big_vision names (per-layer layout, no `params/` prefix)."""
  image, text = model["towers"]["image"], model["towers"]["text"]
  p = image["patch_size"]
  out = [
      entry("image_tower/embedding/kernel", "img/embedding/kernel",
            lambda k: k.reshape(-1, k.shape[-1]),  # (row, col, channel) order, as ours
            lambda k: (k.reshape(p, p, -1, k.shape[-1]),)),
      entry("image_tower/embedding/bias", "img/embedding/bias"),
      entry("image_tower/pos_embedding", "img/pos_embedding"),
  ]
  out += _encoder("image_tower/encoder", "img/Transformer", image["depth"])
  if image["pool"] == "map":
    head = "img/MAPHead_0/MultiHeadDotProductAttention_0"
    out += [entry("image_tower/map_head/probe", "img/MAPHead_0/probe"),
            entry("image_tower/map_head/q/kernel", f"{head}/query/kernel"),
            entry("image_tower/map_head/q/bias", f"{head}/query/bias")]
    out += _fused("image_tower/map_head/kv", head, ("key", "value"))
    out += _dense("image_tower/map_head/out", f"{head}/out")
    out += _layernorm("image_tower/map_head/ln", "img/MAPHead_0/LayerNorm_0")
    out += _mlp("image_tower/map_head/mlp", "img/MAPHead_0/MlpBlock_0")
  elif image["pool"] == "cls":
    out.append(entry("image_tower/cls", "img/cls"))
  if image.get("proj", True):
    out += _dense("image_proj", "img/head")
  out += [entry("text_tower/token_embedding", "txt/Embed_0/embedding"),
          entry("text_tower/pos_embedding", "txt/pos_embedding",
                lambda x: x[0], lambda x: (x[None],))]
  out += _encoder("text_tower/encoder", "txt/Encoder_0", text["depth"])
  if text.get("proj", True):
    out += _dense("text_proj", "txt/head")
  out += [entry("log_scale", "t", lambda t: t.reshape(()), lambda x: (np.reshape(x, (1,)),)),
          entry("bias", "b", lambda b: b.reshape(()), lambda x: (np.reshape(x, (1,)),))]
  return out
