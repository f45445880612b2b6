"""Two-tower model: image and text encoders projected into one L2-normalised space."""

import math
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
from flax.core import FrozenDict

from mmjax.models import bert, cnn, layers, text, vit
from mmjax.models.layers import logical

IMAGE_TOWERS = {"vit": vit.ViT, "cnn": cnn.ConvNet}
# "transformer": trained from scratch; "bert": BERT, e.g. all-MiniLM-L6-v2's weights
# (config.init.pretrained_text). Either way the params live under "text_tower".
TEXT_TOWERS = {"transformer": text.TextTransformer, "bert": bert.BertEncoder}


def _image_input(images):
  """uint8 [0, 255] -> float [-1, 1] exactly as encode_image does; float passes."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) * (2 / 255) - 1
  return images


def _l2_normalize(x, eps=1e-6):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class TwoTower(nn.Module):
  """CLIP/SigLIP-style model.

  Attributes:
    image: kwargs of the image tower, with `kind` in IMAGE_TOWERS ("vit", "cnn").
    text: kwargs of the text tower, with `kind` in TEXT_TOWERS ("transformer",
      the default: `text.TextTransformer`; "bert": `bert.BertEncoder`).
    embed_dim: size D of the shared space.
    temperature_init: initial logit scale (the multiplier, > 0): CLIP uses 1/0.07,
      SigLIP 10. Learned as its logarithm, so it stays positive.
    max_temperature: the scale is clipped to this (CLIP's 100), keeping the softmax
      from collapsing onto one logit early in training.
    bias_init: initial logit bias for the sigmoid loss (SigLIP: -10); None means no
      bias parameter and outputs["bias"] = 0.
    dtype: compute dtype of both towers; embeddings, scale and bias are float32.
    teacher_dim: None, or the embedding size D_t of a distillation teacher: the
      model then holds a learned map `to_teacher` [D, D_t] from its space into
      the teacher's (for `mse_to_teacher` when D != D_t). It is a parameter
      like `log_scale`, so it trains, is checkpointed and warm-starts with the
      rest, and never touches zimg / ztxt or retrieval.

  __call__(images [B, H, W, C] uint8 or float, tokens [B, L] int) returns a dict:
    zimg [B, D] float32, ztxt [B, D] float32 (unit norm), scale [] float32,
    bias [] float32, and with teacher_dim to_teacher [D, D_t] float32.
  """

  image: Mapping[str, Any]
  text: Mapping[str, Any]
  embed_dim: int = 512
  temperature_init: float = 10.0
  max_temperature: float = 100.0
  bias_init: float | None = -10.0
  dtype: str = "float32"
  teacher_dim: int | None = None

  def setup(self):
    image_kwargs = dict(self.image)
    kind = image_kwargs.pop("kind", "vit")
    if kind not in IMAGE_TOWERS:
      raise ValueError(f"model.image.kind={kind!r}; choose one of {sorted(IMAGE_TOWERS)}.")
    self.image_tower = IMAGE_TOWERS[kind](dtype=self.dtype, **image_kwargs)
    text_kwargs = dict(self.text)
    text_kind = text_kwargs.pop("kind", "transformer")
    if text_kind not in TEXT_TOWERS:
      raise ValueError(f"model.text.kind={text_kind!r}; choose one of {sorted(TEXT_TOWERS)}.")
    tower = TEXT_TOWERS[text_kind]
    if unknown := sorted(set(text_kwargs) - set(tower.__dataclass_fields__)):
      # e.g. the base config's causal=True left in place when switching to "bert".
      raise ValueError(f"model.text has {unknown}, which the {text_kind!r} text tower "
                       f"({tower.__name__}) does not take; remove them from model.text.")
    self.text_tower = tower(dtype=self.dtype, **text_kwargs)
    proj = lambda name: nn.Dense(
        self.embed_dim, use_bias=False, dtype=self.dtype, name=name,
        kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "embed", "joint"))
    self.image_proj = proj("image_proj")
    self.text_proj = proj("text_proj")
    self.log_scale = self.param("log_scale", logical(nn.initializers.constant(
        math.log(self.temperature_init))), ())
    if self.bias_init is not None:
      self.bias = self.param("bias", logical(nn.initializers.constant(self.bias_init)), ())
    if self.teacher_dim:
      self.to_teacher = self.param(
          "to_teacher", logical(layers.DEFAULT_KERNEL_INIT, "joint", None),
          (self.embed_dim, self.teacher_dim))

  def encode_image(self, images):
    """images: [B, H, W, C] uint8 in [0, 255] or float in [-1, 1] -> [B, D] unit norm."""
    if images.dtype == jnp.uint8:
      # Normalising here lets the input pipeline ship uint8: 4x fewer bytes to device.
      images = images.astype(jnp.float32) * (2 / 255) - 1
    return _l2_normalize(self.image_proj(self.image_tower(images)))

  def encode_text(self, tokens):
    """tokens: [B, L] int -> [B, D] unit norm."""
    return _l2_normalize(self.text_proj(self.text_tower(tokens)))

  def encode_tokens(self, images=None, tokens=None):
    """Token-level tower outputs, for matching heads that fuse the modalities.

    images: [B, H, W, C] as in encode_image, or None; tokens: [B', L] int, or None.
    Returns a dict with, for images, image_tokens [B, P, W_img] (the image tower's
    sequence before pooling: ViT patch tokens, or the ConvNet's last feature map)
    and zimg [B, D]; for tokens, text_tokens [B', L, W_txt], text_mask [B', L]
    bool (True on real tokens) and ztxt [B', D]. zimg and ztxt are computed as
    in encode_image / encode_text, from the same pass: no extra parameters.
    """
    out = {}
    if images is not None:
      pooled, seq = self.image_tower(_image_input(images), return_sequence=True)
      out.update(image_tokens=seq, zimg=_l2_normalize(self.image_proj(pooled)))
    if tokens is not None:
      pooled, seq = self.text_tower(tokens, return_sequence=True)
      out.update(text_tokens=seq, text_mask=tokens != self.text_tower.pad_id,
                 ztxt=_l2_normalize(self.text_proj(pooled)))
    return out

  def __call__(self, images, tokens):
    scale = jnp.exp(jnp.minimum(self.log_scale, math.log(self.max_temperature)))
    bias = self.bias if self.bias_init is not None else jnp.zeros((), jnp.float32)
    out = {
        "zimg": self.encode_image(images),
        "ztxt": self.encode_text(tokens),
        "scale": scale.astype(jnp.float32),
        "bias": jnp.asarray(bias, jnp.float32),
    }
    if self.teacher_dim:
      out["to_teacher"] = jnp.asarray(self.to_teacher, jnp.float32)
    return out


def _frozen(kwargs: Mapping[str, Any]) -> FrozenDict:
  """Tower kwargs as a hashable mapping, so the model can be a static jit argument."""
  return FrozenDict({k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def build(model_cfg, vocab_size: int, context_length: int) -> TwoTower:
  """Builds a TwoTower from `config.model`; the tokenizer fixes vocab and length."""
  text_kwargs = dict(model_cfg.text)
  text_kwargs.update(vocab_size=vocab_size, context_length=context_length)
  image_kwargs = dict(model_cfg.image)
  # model.remat switches rematerialisation on for every tower that has
  # transformer blocks; a tower's own `remat` key overrides it.
  remat = bool(model_cfg.get("remat", False))
  text_kwargs.setdefault("remat", remat)
  tower = IMAGE_TOWERS.get(image_kwargs.get("kind", "vit"))
  if tower is not None and "remat" in getattr(tower, "__dataclass_fields__", {}):
    image_kwargs.setdefault("remat", remat)
  return TwoTower(
      image=_frozen(image_kwargs),
      text=_frozen(text_kwargs),
      embed_dim=model_cfg.embed_dim,
      temperature_init=model_cfg.temperature_init,
      max_temperature=model_cfg.get("max_temperature", 100.0),
      bias_init=model_cfg.get("bias_init", None),
      dtype=model_cfg.get("dtype", "float32"),
      teacher_dim=model_cfg.get("teacher_dim", None) or None,
  )
