"""mmjax against open_clip: one full training step of the same two-tower model.

Both sides build the model from one description (ViT + causal text transformer,
CLIP layout: class-token pooling with a LayerNorm before the first block, text
pooled at its end-of-text token), take the same batch of random images and
captions, and run forward, loss, backward and one AdamW update (weight decay on
matrices only). The steps are timed alternately in one process after warm-up,
so both see the same machine state; the ratio is the median over pairs of
(open_clip step time / mmjax step time), i.e. mmjax images/s over open_clip's.

  python experiments/benchmarks/train_step.py --preset small --loss sigmoid

open_clip and torch are the optional `bench` extra (setup.py); in a separate
environment:  MMJAX_VENV=.venv-bench bash -c 'source launch/_venv.sh bench'.
With --no-open-clip only the mmjax side runs (and the ratio is omitted).

The last line printed is one JSON object (preset, loss, images/s of each side,
ratio and its spread, FLOPs per step from XLA's cost analysis and from the
analytic count, and mmjax's flops_fraction against this machine's measured
float32 matmul rate).

Known differences, both small: mmjax's GELU is the tanh form, open_clip's the
erf form; open_clip fuses q, k, v into one [3W, W] matrix, mmjax into one
[W, 3, H, Dh] tensor (the same parameters).
"""

import argparse
import json
import math
import os
import statistics
import time

import jax
import numpy as np
import optax
from flax.core import FrozenDict

from mmjax import losses
from mmjax.models import multi_tower
from mmjax.train import perf
from mmjax.train import state as state_lib
from mmjax.train import step as step_lib

PRESETS = {
    "small": dict(image_size=64, patch=8, width=256, depth=4, heads=4,
                  text_width=256, text_depth=4, text_heads=4, context=32,
                  vocab=49408, embed=256),
    "b32-lite": dict(image_size=224, patch=32, width=384, depth=6, heads=6,
                     text_width=384, text_depth=6, text_heads=6, context=64,
                     vocab=49408, embed=384),
    # ViT-B/16 with a B text tower, SigLIP B/16's sizes (its 32k vocabulary,
    # 64 tokens) in this benchmark's CLIP layout; experiments/benchmarks/gpu_check.py.
    "b16": dict(image_size=224, patch=16, width=768, depth=12, heads=12,
                text_width=768, text_depth=12, text_heads=12, context=64,
                vocab=32000, embed=768),
}
LOSSES = {"softmax": "softmax_contrastive", "sigmoid": "sigmoid_contrastive"}
LR, WEIGHT_DECAY = 1e-3, 0.1


def random_batch(spec: dict, batch: int, seed: int = 0) -> dict:
  """uint8 images [B, S, S, 3] and captions [B, L] int32: random ids, then the
  end-of-text id (the vocabulary's last, so open_clip's argmax pooling and
  mmjax's last-token pooling pick the same position), then padding 0."""
  rng = np.random.default_rng(seed)
  s, length, vocab = spec["image_size"], spec["context"], spec["vocab"]
  images = rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
  tokens = np.zeros((batch, length), np.int32)
  for i, n in enumerate(rng.integers(4, length, batch)):
    tokens[i, :n - 1] = rng.integers(1, vocab - 1, n - 1)
    tokens[i, n - 1] = vocab - 1
  return {"image": images, "text": tokens}


def mmjax_model(spec: dict, loss: str, dtype: str = "float32") -> multi_tower.MultiTower:
  """The model of `spec`; dtype is the towers' compute dtype (params stay float32)."""
  return multi_tower.MultiTower(
      towers=FrozenDict(
          image=FrozenDict(kind="vit", patch_size=spec["patch"], width=spec["width"],
                           depth=spec["depth"], num_heads=spec["heads"], pool="cls",
                           ln_pre=True),
          text=FrozenDict(kind="transformer", vocab_size=spec["vocab"],
                          context_length=spec["context"], width=spec["text_width"],
                          depth=spec["text_depth"], num_heads=spec["text_heads"],
                          causal=True, pool="eos")),
      embed_dim=spec["embed"], temperature_init=10.0,
      bias_init=-10.0 if loss == "sigmoid" else None, dtype=dtype)


def mmjax_step(spec: dict, loss: str, dtype: str = "float32"):
  """(model, optimizer, train_step(state, batch, frozen_params)) as MmjaxSide runs them."""
  model = mmjax_model(spec, loss, dtype)
  tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY, mask=state_lib.decay_mask)
  step = step_lib.make_train_step(model, tx, losses.combine({LOSSES[loss]: 1.0}),
                                  lambda s: LR)
  return model, tx, step


class MmjaxSide:
  """mmjax's own train step (mmjax.train.step), jitted with the state donated.

  dtype: the towers' compute dtype. compiled: the step already compiled for
  this batch's shapes (e.g. from abstract shapes), instead of compiling here.
  """

  def __init__(self, spec: dict, loss: str, batch: dict, dtype: str = "float32",
               compiled=None):
    model, tx, step = mmjax_step(spec, loss, dtype)
    # Initialised under jit: one compile, where op-by-op init compiles every
    # op of every layer (17.8 s against 6.8 s for gpu_check's tiny dry-run
    # model on a busy 2-core CPU); the values agree to float rounding.
    self.state = jax.jit(lambda b: state_lib.create(
        state_lib.init_params(model, jax.random.key(0), b), tx))(
            {k: v[:1] for k, v in batch.items()})
    self.num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.state.params))
    self.batch = jax.device_put(batch)
    self.compiled = compiled or jax.jit(step, donate_argnums=0).lower(
        self.state, self.batch, {}).compile()
    self.flops = perf.compiled_flops(self.compiled)
    self.model = model

  def step(self) -> float:
    self.state, metrics = self.compiled(self.state, self.batch, {})
    return float(metrics["train/loss"])  # waits for the step


class OpenClipSide:
  """open_clip's CLIP model and loss, torch.optim.AdamW, eager float32: what
  open_clip's training script runs on CPU (no torch.compile).

  device: a torch device ("cuda" for a GPU). amp: None, or the autocast dtype
  of the forward pass and loss ("bfloat16": open_clip's --precision amp_bf16;
  parameters and optimizer stay float32, no grad scaler).
  """

  def __init__(self, spec: dict, loss: str, batch: dict, device: str = "cpu",
               amp: str | None = None):
    import torch
    from open_clip import loss as oc_loss
    from open_clip import model as oc_model

    self.torch = torch
    torch.manual_seed(0)
    vision = oc_model.CLIPVisionCfg(
        layers=spec["depth"], width=spec["width"], head_width=spec["width"] // spec["heads"],
        patch_size=spec["patch"], image_size=spec["image_size"])
    text = oc_model.CLIPTextCfg(
        context_length=spec["context"], vocab_size=spec["vocab"], width=spec["text_width"],
        heads=spec["text_heads"], layers=spec["text_depth"])
    self.model = oc_model.CLIP(
        spec["embed"], vision, text, init_logit_scale=math.log(10.0),
        init_logit_bias=-10.0 if loss == "sigmoid" else None, output_dict=True)
    self.device = torch.device(device)
    self.model.to(self.device)
    self.model.train()
    self.num_params = sum(p.numel() for p in self.model.parameters())
    decay = [p for p in self.model.parameters() if p.ndim >= 2]
    no_decay = [p for p in self.model.parameters() if p.ndim < 2]
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    self.loss = oc_loss.SigLipLoss() if loss == "sigmoid" else oc_loss.ClipLoss()
    self.sigmoid = loss == "sigmoid"
    # The same pixels as mmjax sees: uint8 -> [-1, 1], channels first.
    self.images = (torch.from_numpy(batch["image"]).to(self.device).permute(0, 3, 1, 2)
                   .float() * (2 / 255) - 1).contiguous()
    self.tokens = torch.from_numpy(batch["text"]).to(self.device).long()
    self.amp = getattr(torch, amp) if amp else None

  def step(self) -> float:
    with self.torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
      out = self.model(self.images, self.tokens)
      args = [out["image_features"], out["text_features"], out["logit_scale"]]
      if self.sigmoid:
        args.append(out["logit_bias"])
      loss = self.loss(*args)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return float(loss)


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def summary(xs) -> str:
  return f"min {min(xs):.3f}  median {statistics.median(xs):.3f}  max {max(xs):.3f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
  parser.add_argument("--loss", choices=sorted(LOSSES), default="sigmoid")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--no-open-clip", action="store_true",
                      help="time only the mmjax side (no torch needed)")
  args = parser.parse_args()
  spec = PRESETS[args.preset]
  batch = random_batch(spec, args.batch)
  print(f"preset {args.preset}: {spec}, loss {args.loss}, batch {args.batch}, "
        f"float32, {os.cpu_count()} CPU cores, jax {jax.__version__}", flush=True)

  mmjax = MmjaxSide(spec, args.loss, batch)
  analytic = perf.two_tower_train_flops(mmjax.model, spec["image_size"], spec["context"],
                                        args.batch)
  print(f"mmjax: {mmjax.num_params:,} params; FLOPs per step: XLA cost analysis "
        f"{mmjax.flops / 1e9:.1f} G, analytic {analytic / 1e9:.1f} G "
        f"(XLA / analytic {mmjax.flops / analytic:.3f})", flush=True)
  sides = {"mmjax": mmjax}
  if not args.no_open_clip:
    oc = OpenClipSide(spec, args.loss, batch)
    import torch
    print(f"open_clip: {oc.num_params:,} params, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if oc.num_params != mmjax.num_params:
      raise SystemExit(f"parameter counts differ: mmjax {mmjax.num_params:,}, open_clip "
                       f"{oc.num_params:,}; the two models are not the same description.")
    sides["open_clip"] = oc

  for name, side in sides.items():
    for _ in range(args.warmup):
      loss = side.step()
    print(f"{name}: warm-up done, loss {loss:.4f}", flush=True)

  times = {name: [] for name in sides}
  for r in range(args.rounds):
    # Alternate who goes first, so neither always follows the other's cache state.
    order = list(sides) if r % 2 == 0 else list(sides)[::-1]
    for name in order:
      times[name].append(timed(sides[name].step))
  peak = perf.matmul_flops_per_sec(seconds=2.0)

  result = {"preset": args.preset, "loss": args.loss, "batch": args.batch,
            "dtype": "float32", "params": mmjax.num_params}
  for name, ts in times.items():
    print(f"{name} step seconds: {summary(ts)}")
    result[f"{name}_images_per_sec"] = args.batch / statistics.median(ts)
  flops_fraction = mmjax.flops / statistics.median(times["mmjax"]) / peak
  print(f"matmul peak {peak / 1e9:.0f} GFLOP/s; mmjax flops_fraction {flops_fraction:.2f}")
  if "open_clip" in times:
    ratios = [o / m for m, o in zip(times["mmjax"], times["open_clip"])]
    print(f"images/s mmjax / open_clip: {summary(ratios)}")
    result.update(ratio=statistics.median(ratios), ratio_min=min(ratios),
                  ratio_max=max(ratios))
  result.update(flops_per_step_xla=mmjax.flops, flops_per_step_analytic=analytic,
                matmul_flops_per_sec=peak, mmjax_flops_fraction=flops_fraction)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
