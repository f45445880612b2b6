"""Writes tests/hub/data/open_clip/: tiny random open_clip models and their outputs.

Run with the reference venv (torch, open_clip, timm), from the repository root:

  .venv-bench/bin/python tests/hub/references/make_open_clip.py

Nothing is downloaded: every model is built from a config with random weights.
Three models, each small enough to keep the directory under ~1 MB:

  clip_quickgelu  open_clip CLIP (VisionTransformer + TextTransformer), QuickGELU,
                  saved three ways: .pt, .bin (a training checkpoint: {"state_dict"}
                  with DDP's "module." prefix) and .safetensors.
  clip_gelu       CLIP with exact GELU, 2 layers, 4 heads, mlp_ratio 2, built as
                  CustomTextCLIP (text tower under "text."), a [1]-shaped logit
                  scale and a logit bias; saved as .pt.
  siglip          the *-SigLIP* layout: a timm ViT trunk (registered here, tiny,
                  exact GELU, attention-pool head) and open_clip's text tower
                  without causal mask, pooled at the last position, tanh GELU
                  (act_kwargs, as the SigLIP 2 configs), eps 1e-6; .safetensors.

Weights are drawn larger than open_clip's init (unit-variance pre-activations)
so that a wrong activation (GELU vs tanh GELU vs QuickGELU) or epsilon shows in
the outputs. For each model: <name>.json (the open_clip config; the siglip one
also holds the trunk's sizes under vision_cfg.mmjax_timm_trunk, which mmjax
reads and open_clip never sees) and <name>_ref.npz: images [B, H, W, 3]
float32 (the tower's input, NHWC), texts [B, L] int32, z_image / z_text [B, D]
(encode_*(normalize=True)) and logits [B, B] (get_logits: scale * zi @ zt.T +
bias). Also layouts.pt / layouts_ref.npz for the torch file reader.
"""

import copy
import json
import os
import pathlib
import tempfile

import numpy as np
import open_clip
import safetensors.torch
import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "open_clip"
IMAGE, VOCAB, CONTEXT, BATCH = 32, 64, 12, 3

TRUNK = {"patch_size": 8, "width": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 3.0,
         "act": "gelu"}


@register_model
def vit_mmjax_tiny_siglip_32(pretrained=False, **kwargs):
  """A SigLIP-style timm trunk at toy size (timm's own are B/16 and up)."""
  del pretrained
  keep = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")}
  return VisionTransformer(
      img_size=IMAGE, patch_size=TRUNK["patch_size"], embed_dim=TRUNK["width"],
      depth=TRUNK["depth"], num_heads=TRUNK["num_heads"], mlp_ratio=TRUNK["mlp_ratio"],
      class_token=False, **{"global_pool": "map", **keep})


def _text_cfg(**kw):
  return {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "heads": 2,
          "layers": 1, **kw}


CONFIGS = {
    "clip_quickgelu": {
        "embed_dim": 16, "quick_gelu": True,
        "vision_cfg": {"image_size": IMAGE, "layers": 1, "width": 32, "head_width": 16,
                       "patch_size": 8},
        "text_cfg": _text_cfg()},
    "clip_gelu": {
        "embed_dim": 24, "custom_text": True, "nonscalar_logit_scale": True,
        "init_logit_bias": -3.0,
        "vision_cfg": {"image_size": IMAGE, "layers": 2, "width": 32, "head_width": 8,
                       "patch_size": 8, "mlp_ratio": 2.0},
        "text_cfg": _text_cfg(layers=2, heads=4, mlp_ratio=2.0)},
    "siglip": {
        "embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": IMAGE, "timm_model_name": "vit_mmjax_tiny_siglip_32",
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none",
                       "mmjax_timm_trunk": TRUNK},
        "text_cfg": _text_cfg(no_causal_mask=True, proj_bias=True, pool_type="last",
                              norm_kwargs={"eps": 1e-6}, act_kwargs={"approximate": "tanh"},
                              mlp_ratio=3.0)},
}
FORMATS = {"clip_quickgelu": ("pt", "bin", "safetensors"), "clip_gelu": ("pt",),
           "siglip": ("safetensors",)}


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Unit-scale random weights: LayerNorm scales near 1, biases and embeddings
  O(0.3-0.5), matrices 1/sqrt(fan_in) (2.5/sqrt(fan_in) into the MLPs)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      leaf = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
      if name.endswith("logit_scale"):
        p.fill_(float(np.log(7.3)))
      elif name.endswith("logit_bias"):
        p.fill_(-3.1)
      elif p.ndim == 1 and ("norm" in leaf or leaf.startswith("ln")):
        p.copy_((1 + 0.2 * noise) if name.endswith("weight") else 0.2 * noise)
      elif p.ndim == 1 or "embed" in name or name.endswith("latent"):
        p.copy_(0.4 * noise)
      else:
        fan_in = p.shape[-1] if p.ndim == 2 else int(np.prod(p.shape[1:]))
        if name.endswith(("visual.proj", "text_projection")) and p.ndim == 2 and \
            not name.endswith("weight"):
          fan_in = p.shape[0]  # a bare [W, D] parameter, used as x @ proj
        # MLP inputs of std ~2.5: where GELU, tanh GELU and QuickGELU differ most.
        gain = 2.5 if name.endswith(("c_fc.weight", "fc1.weight")) else 1.0
        p.copy_(gain * noise / np.sqrt(fan_in))


def inputs(seed: int, siglip: bool):
  """images [B, 3, H, W] float32; texts [B, L] int64 in the family's layout."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(BATCH, 3, IMAGE, IMAGE)).astype(np.float32)
  texts = np.zeros((BATCH, CONTEXT), np.int64)
  for i, n in enumerate((3, 7, CONTEXT)):
    if siglip:  # words, then EOS (1), then padding (1); the full row has no EOS
      texts[i] = 1
      texts[i, :n] = rng.integers(2, VOCAB, n)
    else:  # SOT (VOCAB - 2), words, EOT (VOCAB - 1, the largest id), zeros
      texts[i, 0], texts[i, n - 1] = VOCAB - 2, VOCAB - 1
      texts[i, 1:n - 1] = rng.integers(1, VOCAB - 2, n - 2)
  return torch.from_numpy(images), torch.from_numpy(texts)


def make(name: str, config_dir: pathlib.Path, seed: int) -> None:
  config = CONFIGS[name]
  for_open_clip = copy.deepcopy(config)
  for_open_clip["vision_cfg"].pop("mmjax_timm_trunk", None)
  (config_dir / f"mmjax_tiny_{name}.json").write_text(json.dumps(for_open_clip))
  open_clip.add_model_config(config_dir)
  model = open_clip.create_model(f"mmjax_tiny_{name}", pretrained=None).eval()
  randomize(model, seed)
  images, texts = inputs(seed, siglip=name == "siglip")
  with torch.no_grad():
    z_image = model.encode_image(images, normalize=True)
    z_text = model.encode_text(texts, normalize=True)
    logits, _ = model.get_logits(images, texts)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  for fmt in FORMATS[name]:
    path = OUT / f"{name}.{fmt}"
    if fmt == "safetensors":
      safetensors.torch.save_file(state, str(path))
      os.chmod(path, 0o644)
    elif fmt == "bin":
      torch.save({"epoch": 3, "name": name,
                  "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
      torch.save(state, path)
  (OUT / f"{name}.json").write_text(json.dumps(config, indent=1) + "\n")
  np.savez(OUT / f"{name}_ref.npz", images=images.numpy().transpose(0, 2, 3, 1),
           texts=texts.numpy().astype(np.int32), z_image=z_image.numpy(),
           z_text=z_text.numpy(), logits=logits.numpy())
  print(f"{name}: {sum(v.numel() for v in state.values())} weights, logits "
        f"{logits.numpy().round(2).tolist()}")


def layouts() -> None:
  """layouts.pt: tensors in every layout torch.save writes that a reader must
  undo (dtypes, bfloat16, views with offsets and strides, 0-d, empty, shared
  storage), and layouts_ref.npz: the same as NumPy (bfloat16 as float32)."""
  gen = torch.Generator().manual_seed(7)
  base = torch.randn(4, 6, generator=gen)
  state = {"float32": torch.randn(2, 3, generator=gen), "float16": base[0].half(),
           "bfloat16": base[1].bfloat16(), "float64": base[2].double(),
           "int64": torch.arange(6).reshape(2, 3), "int32": torch.arange(4, dtype=torch.int32),
           "uint8": torch.arange(5, dtype=torch.uint8), "bool": torch.tensor([True, False]),
           "transposed": base.t(), "sliced": base[1:3, 2:5], "scalar": torch.tensor(2.5),
           "empty": torch.zeros(0, 3), "shares_base": base}
  torch.save(state, OUT / "layouts.pt")
  np.savez(OUT / "layouts_ref.npz", **{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
                                       for k, v in state.items()})


def main():
  OUT.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  with tempfile.TemporaryDirectory() as tmp:
    for seed, name in enumerate(CONFIGS):
      make(name, pathlib.Path(tmp), seed)
  layouts()
  versions = {"torch": torch.__version__, "open_clip": open_clip.__version__,
              "timm": timm.__version__}
  (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")
  total = sum(f.stat().st_size for f in OUT.iterdir())
  print(f"wrote {OUT} ({total / 1e3:.0f} kB) with {versions}")


if __name__ == "__main__":
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
  main()
