"""The transformer layer's pieces, rewritten forms against the forms they replace.

Forward + backward of each piece at the `small` preset's image-tower shapes (B
64, T 65, W 256, 4 heads; train_step.py), jitted, timed alternately in one
process, median over rounds of (reference time / candidate time): above 1 means
the candidate is faster. The references are what mmjax used before and what
flax gives (`nn.Dense` / `nn.DenseGeneral` autodiff, `nn.LayerNorm`); the
candidates are `mmjax.models.layers` today, plus two forms that were measured
and not kept: the heads-major attention layout and a normalise-then-scale
LayerNorm.

  python experiments/benchmarks/layers.py
  python experiments/benchmarks/layers.py --shape 128,17,256,4 --rounds 30

Each pair is first checked for equal value and gradient. The last line printed
is one JSON object: per pair, the two medians in ms and the ratio's quartiles.
"""

import argparse
import functools
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers


def flax_dense(features, name, in_axes=1):
  axis = tuple(range(-in_axes, 0))
  return nn.DenseGeneral(features, axis=axis, kernel_init=layers.DEFAULT_KERNEL_INIT,
                         name=name)


class ReferenceAttention(nn.Module):
  """The earlier SelfAttention: flax DenseGenerals, token-major [B, T, H, Dh]."""
  num_heads: int

  @nn.compact
  def __call__(self, x):
    w = x.shape[-1]
    qkv = flax_dense((3, self.num_heads, w // self.num_heads), "qkv")(x)
    out = layers.attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return flax_dense(w, "out", 2)(out)


class HeadsMajorAttention(nn.Module):
  """layers.Dense projections, q, k, v moved to heads-major [B, H, T, Dh] for
  the two attention products and back before the output projection."""
  num_heads: int

  @nn.compact
  def __call__(self, x):
    w = x.shape[-1]
    qkv = layers.Dense((3, self.num_heads, w // self.num_heads), name="qkv")(x)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    q = q * q.shape[-1] ** -0.5
    probs = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k), axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3)
    return layers.Dense(w, in_axes=2, name="out")(out)


class NormaliseThenScale(nn.Module):
  """LayerNorm as ((x - mean) * rsqrt(var + eps)) * scale + bias: the per-row
  factor stays [..., 1] instead of flax's [..., W] scale * rsqrt(var + eps)."""

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    mean = x.mean(-1, keepdims=True)
    var = jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
    return (x - mean) * jax.lax.rsqrt(var + 1e-6) * scale + bias


class ReferenceMlp(nn.Module):
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    h = nn.gelu(flax_dense(self.mlp_dim, "fc1")(x), approximate=True)
    return flax_dense(x.shape[-1], "fc2")(h)


class ReferenceBlock(nn.Module):
  """The earlier EncoderBlock: flax LayerNorm, dense layers and attention."""
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    x = x + ReferenceAttention(self.num_heads, name="attn")(nn.LayerNorm(1e-6, name="ln1")(x))
    return x + ReferenceMlp(self.mlp_dim, name="mlp")(nn.LayerNorm(1e-6, name="ln2")(x))


def attention_core(layout):
  """The attention products alone, q, k, v given in `layout`."""
  def core(q, k, v):
    if layout == "token":
      return layers.attend(q, k, v)
    q = q * q.shape[-1] ** -0.5
    probs = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k), axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v)
  return core


def fwd_bwd(apply, args, probe):
  """jit(value_and_grad) of sum(sin(apply(*args)) * probe) over all args."""
  loss = lambda *a: jnp.sum(jnp.sin(apply(*a)) * probe)
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args)))))


def pairs(b, t, w, h):
  """name -> (reference (fn, args), candidate (fn, args))."""
  x = jax.random.normal(jax.random.key(0), (b, t, w))
  probe = jax.random.normal(jax.random.key(1), (b, t, w))
  out = {}

  def modules(name, ref, new):
    params = ref.init(jax.random.key(2), x)
    out[name] = (fwd_bwd(ref.apply, (params, x), probe), (params, x),
                 fwd_bwd(new.apply, (params, x), probe), (params, x))

  modules("dense_mlp", ReferenceMlp(4 * w), layers.MlpBlock(4 * w))
  modules("layer_norm_scale_last", nn.LayerNorm(1e-6), NormaliseThenScale())
  modules("attention_module_token_major", ReferenceAttention(h), layers.SelfAttention(h))
  modules("attention_module_heads_major", ReferenceAttention(h), HeadsMajorAttention(h))
  modules("encoder_block", ReferenceBlock(h, 4 * w), layers.EncoderBlock(h, 4 * w))
  qkv = [jax.random.normal(jax.random.key(3 + i), (b, t, h, w // h)) for i in range(3)]
  core_probe = jax.random.normal(jax.random.key(7), (b, t, h, w // h))
  out["attention_core_layout"] = (
      fwd_bwd(attention_core("token"), qkv, core_probe), qkv,
      fwd_bwd(lambda *a: attention_core("heads")(*a).transpose(0, 2, 1, 3),
              [a.transpose(0, 2, 1, 3) for a in qkv], core_probe),
      [a.transpose(0, 2, 1, 3) for a in qkv])
  return out


def check_equal(ref, ref_args, new, new_args, name):
  (v1, g1), (v2, g2) = ref(*ref_args), new(*new_args)
  if name == "attention_core_layout":  # the gradients come back in each layout
    g2 = [g.transpose(0, 2, 1, 3) for g in g2]
  worst = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
              for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
  if worst > 1e-4 or abs(float(v1 - v2)) > 1e-4 * (abs(float(v1)) + 1):
    raise SystemExit(f"{name}: the forms differ (value {v1} vs {v2}, gradient {worst:.2e}).")
  return worst


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="64,65,256,4", help="B,T,W,heads")
  parser.add_argument("--rounds", type=int, default=20)
  args = parser.parse_args()
  b, t, w, h = (int(v) for v in args.shape.split(","))
  results = {}
  for name, (ref, ref_args, new, new_args) in pairs(b, t, w, h).items():
    worst = check_equal(ref, ref_args, new, new_args, name)
    times = {"reference": [], "candidate": []}
    for _ in range(args.rounds):
      for side, fn, a in (("reference", ref, ref_args), ("candidate", new, new_args)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*a))
        times[side].append(time.perf_counter() - start)
    ratios = sorted(r / c for r, c in zip(times["reference"], times["candidate"]))
    q = functools.partial(statistics.quantiles, ratios, n=4)
    results[name] = dict(reference_ms=round(1e3 * statistics.median(times["reference"]), 2),
                         candidate_ms=round(1e3 * statistics.median(times["candidate"]), 2),
                         ratio_median=round(statistics.median(ratios), 3),
                         ratio_quartiles=[round(v, 3) for v in (q()[0], q()[2])],
                         gradient_rel_diff=float(f"{worst:.1e}"))
    r = results[name]
    print(f"{name:30s} reference {r['reference_ms']:8.2f} ms  candidate {r['candidate_ms']:8.2f} ms"
          f"  reference/candidate {r['ratio_median']:.3f} ({r['ratio_quartiles'][0]:.3f}-"
          f"{r['ratio_quartiles'][1]:.3f})", flush=True)
  print(json.dumps(dict(shape=dict(batch=b, tokens=t, width=w, heads=h), rounds=args.rounds,
                        results=results)))


if __name__ == "__main__":
  main()
