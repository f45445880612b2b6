"""Writes the Hugging Face reference fixtures of tests/hub/test_hf.py.

Run with the reference venv (torch + transformers), from the repository root:

  /work/main/.venv-bench/bin/python tests/hub/references/make_hf.py

For each tiny random-weight model (no download) it writes
tests/hub/data/hf/<name>/ as `save_pretrained` does (config.json and
model.safetensors, or the sharded form) and reference.npz with the inputs and
transformers' outputs on them:

  pixels       [B, H, W, 3] float32, already normalised (the towers' input)
  ids          [B, L] int32, padded the family's way
  image_embeds [B, D] float32, unit norm
  text_embeds  [B, D] float32, unit norm
  logits_per_image [B, B] float32

The models cover what the reader has to get right: SigLIP (sharded float32
files), SigLIP 2 (bfloat16 file, patches fed as NaFlex patch sequences at the
full square grid), CLIP with exact GELU and CLIP with quick_gelu (float16
file). LayerNorms, biases, the probe and the logit scale and bias are moved
away from their initial values, so a tensor the reader dropped would show.
Weights stored in 16 bits are rounded first and the reference computed from
the rounded float32 weights, so the fixture and the reference agree exactly.
"""

import math
import os
import shutil

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "data", "hf")

BATCH, IMAGE, PATCH, LENGTH = 3, 32, 8, 16


def siglip_config(vocab=128):
  text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=2, max_position_embeddings=LENGTH,
              hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, pad_token_id=1,
              eos_token_id=1, bos_token_id=None, projection_size=32)
  vision = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=2, image_size=IMAGE, patch_size=PATCH,
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
  return transformers.SiglipConfig(text_config=text, vision_config=vision)


def siglip2_config(vocab=160):
  text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, max_position_embeddings=LENGTH,
              hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, pad_token_id=0,
              eos_token_id=1, bos_token_id=2, projection_size=32)
  vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, patch_size=PATCH, num_patches=(IMAGE // PATCH) ** 2,
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
  return transformers.Siglip2Config(text_config=text, vision_config=vision)


def clip_config(act, vocab=200, text_width=48, projection=24):
  text = dict(vocab_size=vocab, hidden_size=text_width, intermediate_size=2 * text_width,
              num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=LENGTH,
              hidden_act=act, layer_norm_eps=1e-5, pad_token_id=0, bos_token_id=vocab - 2,
              eos_token_id=vocab - 1, projection_dim=projection)
  vision = dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=2, image_size=IMAGE, patch_size=PATCH, hidden_act=act,
                layer_norm_eps=1e-5, projection_dim=projection)
  return transformers.CLIPConfig(text_config=text, vision_config=vision,
                                 projection_dim=projection)


def perturb(model, seed, scale, bias):
  """Moves every bias, LayerNorm, probe and class token off its init."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name or "probe" in name or "class_emb" in name:
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.logit_scale.fill_(math.log(scale))
    if hasattr(model, "logit_bias"):
      model.logit_bias.fill_(bias)


def round_to(model, dtype):
  """Rounds the weights to `dtype` in place (kept float32 for the reference)."""
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(p.to(dtype).to(torch.float32))


def ids_for(family, vocab, rng):
  """[B, LENGTH] int32 captions of 3 lengths (one fills the context), padded
  as the family's tokenizer pads."""
  lengths = (4, 9, LENGTH)
  rows = []
  for i, n in enumerate(lengths):
    if family == "clip":  # <sot> words <eot>, pad 0 (open_clip) or <eot> (HF)
      words = rng.integers(1, vocab - 2, n - 2)
      row = [vocab - 2, *words, vocab - 1]
      pad = 0 if i % 2 == 0 else vocab - 1
    elif family == "siglip2":  # <bos> words <eos>, pad 0 (Gemma)
      words = rng.integers(3, vocab, n - 2)
      row, pad = [2, *words, 1], 0
    else:  # words </s>, pad with </s> (id 1), as SiglipTokenizer does
      words = rng.integers(2, vocab, n - 1)
      row, pad = [*words, 1], 1
    rows.append(row + [pad] * (LENGTH - len(row)))
  return np.asarray(rows, np.int32)


def patches(pixels, p):
  """[B, H, W, C] -> [B, H/p * W/p, p * p * C] in (patch row, patch col, channel)
  order, the layout Siglip2ImageProcessor produces."""
  b, h, w, c = pixels.shape
  x = pixels.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def run(model, family, pixels, ids):
  with torch.no_grad():
    if family == "siglip2":
      b = pixels.shape[0]
      n = (IMAGE // PATCH)
      out = model(input_ids=torch.from_numpy(ids).long(),
                  pixel_values=torch.from_numpy(patches(pixels, PATCH)),
                  pixel_attention_mask=torch.ones(b, n * n, dtype=torch.long),
                  spatial_shapes=torch.tensor([[n, n]] * b))
    else:
      out = model(input_ids=torch.from_numpy(ids).long(),
                  pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
  return {"image_embeds": out.image_embeds.numpy(), "text_embeds": out.text_embeds.numpy(),
          "logits_per_image": out.logits_per_image.numpy()}


# name: (family, model class, config, 16-bit dtype to store or None, max shard size)
FIXTURES = {
    "siglip": ("siglip", transformers.SiglipModel, siglip_config, None, "100KB"),
    "siglip2": ("siglip2", transformers.Siglip2Model, siglip2_config, torch.bfloat16, None),
    "clip": ("clip", transformers.CLIPModel, lambda: clip_config("gelu"), None, None),
    "clip_quickgelu": ("clip", transformers.CLIPModel, lambda: clip_config("quick_gelu", 120),
                       torch.float16, None),
}


def build(name, seed=0):
  """The reference model of fixture `name`, float32, eval mode, 16-bit rounded
  where its fixture is stored in 16 bits. Returns (model, family, dtype, shard)."""
  family, cls, config, dtype, shard = FIXTURES[name]
  torch.manual_seed(seed)
  model = cls(config()).eval()
  perturb(model, seed, scale=12.5 if family != "clip" else 21.0,
          bias=-2.75 if family != "clip" else 0.0)
  if dtype is not None:
    round_to(model, dtype)
  return model, family, dtype, shard


def inputs(family, vocab, seed=0):
  rng = np.random.default_rng(seed)
  pixels = rng.uniform(-1, 1, (BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
  return pixels, ids_for(family, vocab, rng)


def main():
  for i, name in enumerate(FIXTURES):
    model, family, dtype, shard = build(name, seed=i)
    pixels, ids = inputs(family, model.config.text_config.vocab_size, seed=i)
    ref = run(model, family, pixels, ids)
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    saved = model if dtype is None else model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    saved.save_pretrained(out, **kwargs)
    np.savez(os.path.join(out, "reference.npz"), pixels=pixels, ids=ids, **ref)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: {sorted(os.listdir(out))} {size / 1e3:.0f} kB")


if __name__ == "__main__":
  main()
