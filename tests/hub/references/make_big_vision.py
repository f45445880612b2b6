"""Writes the big_vision fixtures of tests/hub/test_big_vision.py (run with .venv-bench).

  /work/main/.venv-bench/bin/python tests/hub/references/make_big_vision.py

Builds a tiny random-weight transformers SiglipModel, writes its weights as
big_vision .npz files (the inverse of transformers' convert_siglip_to_hf.py
mapping) and saves its outputs on fixed inputs, all into
tests/hub/data/big_vision/:

  per_layer.npz    params/ prefix, encoderblock_{i}, float32, uncompressed (as released)
  scanned.npz      no prefix, stacked encoderblock [depth, ...], float32
  bf16.npz         params/ prefix, stacked, bfloat16 stored as void 'V2' (as released)
  img_head.npz     an img/head and no txt/head (the text head of the reference is the
                   identity, the image head a torch Linear after the HF tower)
  reference.npz    pixels [2, 32, 32, 3], tokens [3, 16]; image_embeds, text_embeds,
                   logits_per_image (and *_img_head) of the references; scipy's
                   order-1 zoom of the stored position grid (4x4) to 6x6 and 3x3,
                   which is what big_vision's resample_posemb computes.

The weights are rounded to bfloat16 first, so every file holds the same values
and one reference serves them all. The sizes are big_vision's "mu/8" with 2
layers and mlp_dim 64 (read with variant={"variant": "mu/8", "depth": 2,
"mlp_dim": 64}); vocabulary 200, 16 text positions.

The functions are imported by the live (bench) test as well.
"""

import os

import numpy as np
import torch
from transformers import SiglipConfig, SiglipModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "big_vision")

TINY = dict(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=32, patch_size=8),
    text=dict(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, max_position_embeddings=16, projection_size=32,
              bos_token_id=None, eos_token_id=1, pad_token_id=1),
)
TINY_VARIANT = {"variant": "mu/8", "depth": 2, "mlp_dim": 64}


def build(seed: int, vision: dict | None = None, text: dict | None = None,
          bf16_values: bool = True) -> SiglipModel:
  """A random SiglipModel with LayerNorms, biases, scale and bias moved off their
  initial values (so a swapped or dropped one shows), in eval mode."""
  torch.manual_seed(seed)
  config = SiglipConfig(text_config=dict(text or {}), vision_config=dict(vision or {}))
  model = SiglipModel(config).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        param.copy_(1 + 0.2 * noise)
      elif name.endswith("bias") and name != "logit_bias":
        param.add_(0.1 * noise)
    model.logit_scale.fill_(float(np.log(10.0)) + 0.3)
    model.logit_bias.fill_(-6.3)
    if bf16_values:
      for param in model.parameters():
        param.copy_(param.to(torch.bfloat16).to(torch.float32))
  return model


def _np(t: torch.Tensor) -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32)


def _attention(out: dict, prefix: str, q, k, v, o, heads: int) -> None:
  """HF q/k/v/out Linears -> big_vision MultiHeadDotProductAttention_0 tensors."""
  for name, (w, b) in zip(("query", "key", "value"), (q, k, v)):
    width = w.shape[1]
    out[f"{prefix}/{name}/kernel"] = _np(w).T.reshape(width, heads, -1)
    out[f"{prefix}/{name}/bias"] = _np(b).reshape(heads, -1)
  w, b = o
  out[f"{prefix}/out/kernel"] = _np(w).T.reshape(heads, -1, w.shape[0])
  out[f"{prefix}/out/bias"] = _np(b)


def _dense(out: dict, prefix: str, linear) -> None:
  out[f"{prefix}/kernel"] = _np(linear.weight).T
  out[f"{prefix}/bias"] = _np(linear.bias)


def _ln(out: dict, prefix: str, norm) -> None:
  out[f"{prefix}/scale"] = _np(norm.weight)
  out[f"{prefix}/bias"] = _np(norm.bias)


def _encoder(out: dict, prefix: str, layers, heads: int) -> None:
  for i, layer in enumerate(layers):
    p = f"{prefix}/encoderblock_{i}"
    a = layer.self_attn
    _ln(out, f"{p}/LayerNorm_0", layer.layer_norm1)
    _attention(out, f"{p}/MultiHeadDotProductAttention_0",
               (a.q_proj.weight, a.q_proj.bias), (a.k_proj.weight, a.k_proj.bias),
               (a.v_proj.weight, a.v_proj.bias), (a.out_proj.weight, a.out_proj.bias), heads)
    _ln(out, f"{p}/LayerNorm_1", layer.layer_norm2)
    _dense(out, f"{p}/MlpBlock_0/Dense_0", layer.mlp.fc1)
    _dense(out, f"{p}/MlpBlock_0/Dense_1", layer.mlp.fc2)


def to_big_vision(model: SiglipModel) -> dict[str, np.ndarray]:
  """HF SiglipModel -> big_vision names (per layer, no params/ prefix)."""
  out = {}
  vis, txt = model.vision_model, model.text_model
  vheads = model.config.vision_config.num_attention_heads
  theads = model.config.text_config.num_attention_heads
  emb = vis.embeddings
  out["img/embedding/kernel"] = _np(emb.patch_embedding.weight).transpose(2, 3, 1, 0)
  out["img/embedding/bias"] = _np(emb.patch_embedding.bias)
  out["img/pos_embedding"] = _np(emb.position_embedding.weight)[None]
  _encoder(out, "img/Transformer", vis.encoder.layers, vheads)
  _ln(out, "img/Transformer/encoder_norm", vis.post_layernorm)
  head = vis.head
  out["img/MAPHead_0/probe"] = _np(head.probe)
  wq, wk, wv = head.attention.in_proj_weight.chunk(3)
  bq, bk, bv = head.attention.in_proj_bias.chunk(3)
  _attention(out, "img/MAPHead_0/MultiHeadDotProductAttention_0", (wq, bq), (wk, bk),
             (wv, bv), (head.attention.out_proj.weight, head.attention.out_proj.bias), vheads)
  _ln(out, "img/MAPHead_0/LayerNorm_0", head.layernorm)
  _dense(out, "img/MAPHead_0/MlpBlock_0/Dense_0", head.mlp.fc1)
  _dense(out, "img/MAPHead_0/MlpBlock_0/Dense_1", head.mlp.fc2)
  out["txt/Embed_0/embedding"] = _np(txt.embeddings.token_embedding.weight)
  out["txt/pos_embedding"] = _np(txt.embeddings.position_embedding.weight)[None]
  _encoder(out, "txt/Encoder_0", txt.encoder.layers, theads)
  _ln(out, "txt/Encoder_0/encoder_norm", txt.final_layer_norm)
  _dense(out, "txt/head", txt.head)
  out["t"] = _np(model.logit_scale).reshape(1)
  out["b"] = _np(model.logit_bias).reshape(1)
  return out


def scan(tensors: dict) -> dict:
  """Per-layer names -> one stacked `encoderblock` per tower (big_vision scan=True)."""
  out, stacks = {}, {}
  for name, value in tensors.items():
    head, sep, rest = name.partition("/encoderblock_")
    if not sep:
      out[name] = value
      continue
    layer, _, leaf = rest.partition("/")
    stacks.setdefault(f"{head}/encoderblock/{leaf}", {})[int(layer)] = value
  for name, layers in stacks.items():
    out[name] = np.stack([layers[i] for i in sorted(layers)])
  return out


def as_bf16_void(tensors: dict) -> dict:
  """float32 arrays (bfloat16-exact) -> raw bfloat16 bits as dtype 'V2', which is
  how NumPy saves jax/ml_dtypes bfloat16 arrays."""
  out = {}
  for name, value in tensors.items():
    bits = (np.ascontiguousarray(value, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    out[name] = bits.view("V2")
  return out


def prefixed(tensors: dict) -> dict:
  return {f"params/{name}": value for name, value in tensors.items()}


@torch.no_grad()
def outputs(model: SiglipModel, pixels: np.ndarray, tokens: np.ndarray,
            image_head: tuple | None = None) -> dict[str, np.ndarray]:
  """pixels [B, H, W, 3] float, tokens [N, L] int -> normalised embeddings and
  logits_per_image [B, N]. image_head: (kernel [W, D], bias [D]) applied after
  the HF image tower (big_vision's img/head)."""
  x = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
  zimg = model.vision_model(pixel_values=x).pooler_output
  if image_head is not None:
    zimg = zimg @ torch.from_numpy(image_head[0]) + torch.from_numpy(image_head[1])
  ztxt = model.text_model(input_ids=torch.from_numpy(tokens.astype(np.int64))).pooler_output
  zimg = zimg / zimg.norm(dim=-1, keepdim=True)
  ztxt = ztxt / ztxt.norm(dim=-1, keepdim=True)
  logits = zimg @ ztxt.T * model.logit_scale.exp() + model.logit_bias
  return {"image_embeds": _np(zimg), "text_embeds": _np(ztxt), "logits_per_image": _np(logits)}


def inputs(seed: int, image_size: int, vocab: int, length: int, images: int = 2,
           texts: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Fixed pixels in [-1, 1] and token ids; some captions end in padding (id 1,
  SigLIP's sticky EOS) as real ones do."""
  rng = np.random.default_rng(seed)
  pixels = rng.uniform(-1, 1, (images, image_size, image_size, 3)).astype(np.float32)
  tokens = rng.integers(2, vocab, (texts, length)).astype(np.int32)
  for i in range(texts):
    tokens[i, length - 3 * i:] = 1
  return pixels, tokens


def with_identity_text_head(model: SiglipModel) -> None:
  with torch.no_grad():
    model.text_model.head.weight.copy_(torch.eye(model.text_model.head.weight.shape[0]))
    model.text_model.head.bias.zero_()


def main():
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  os.makedirs(OUT, exist_ok=True)
  model = build(0, TINY["vision"], TINY["text"])
  tensors = to_big_vision(model)
  pixels, tokens = inputs(0, 32, 200, 16)
  ref = {"pixels": pixels, "tokens": tokens, **outputs(model, pixels, tokens)}

  np.savez(os.path.join(OUT, "per_layer.npz"), **prefixed(tensors))
  np.savez_compressed(os.path.join(OUT, "scanned.npz"), **scan(tensors))
  np.savez_compressed(os.path.join(OUT, "bf16.npz"), **prefixed(as_bf16_void(scan(tensors))))

  rng = np.random.default_rng(1)
  kernel = rng.normal(0, 0.2, (32, 32)).astype(np.float32)
  bias = rng.normal(0, 0.1, (32,)).astype(np.float32)
  kernel, bias = (torch.from_numpy(a).to(torch.bfloat16).float().numpy() for a in (kernel, bias))
  with_identity_text_head(model)
  swapped = {k: v for k, v in tensors.items() if not k.startswith("txt/head/")}
  swapped.update({"img/head/kernel": kernel, "img/head/bias": bias})
  np.savez_compressed(os.path.join(OUT, "img_head.npz"), **prefixed(swapped))
  ref.update({f"{k}_img_head": v for k, v in outputs(model, pixels, tokens,
                                                      (kernel, bias)).items()})

  grid = tensors["img/pos_embedding"].reshape(4, 4, -1)
  for n in (6, 3):
    ref[f"posemb_grid{n}"] = scipy.ndimage.zoom(grid, (n / 4, n / 4, 1), order=1)
  np.savez(os.path.join(OUT, "reference.npz"), **ref)
  sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in sorted(os.listdir(OUT))}
  print("wrote", sizes, "total", sum(sizes.values()))


if __name__ == "__main__":
  main()
