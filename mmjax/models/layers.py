"""Transformer building blocks shared by the image and text towers.

Every parameter is created through `logical` (a `nn.LogicallyPartitioned` box),
so it carries logical axis names (`embed`, `mlp`, `heads`, `kv`, ...). One table
of rules in `mmjax.parallel.partitioning` maps those names onto mesh axes; the
modules here never mention a mesh.
"""

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Initialisers follow the ViT / CLIP convention: truncated-normal-ish small weights,
# zero biases, unit LayerNorm scales.
DEFAULT_KERNEL_INIT = nn.initializers.xavier_uniform()
EMBED_INIT = nn.initializers.normal(stddev=0.02)


class LogicalNames(nn.LogicallyPartitioned):
  """A param's logical axis names, as metadata only.

  Flax's own box also pins the param's layout with a sharding constraint when
  unboxed under a mesh, in the shape it has at that moment; DenseGeneral unboxes
  its kernel while still flat (2-D under 4 names), which then fails, and a
  param whose dimension the mesh does not divide would fail too. The layout of
  params is set once, by the train step's in/out shardings
  (`mmjax.parallel.partitioning`), so here unboxing just returns the value.
  """

  def unbox(self, apply_constraint=True):
    del apply_constraint
    return self.value


def logical(init: Callable, *names: str | None) -> Callable:
  """Wraps an initializer so the parameter carries logical axis `names`."""
  def wrapper(*args, **kwargs):
    return LogicalNames(init(*args, **kwargs), names)

  return wrapper


def quick_gelu(x):
  """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


# The MLP activations of the released model families: "gelu_tanh" (big_vision,
# SigLIP, HF "gelu_pytorch_tanh"), "gelu" (exact erf; open_clip's non-OpenAI
# models) and "quick_gelu" (OpenAI CLIP). A checkpoint computes what it was
# trained with only under its own.
ACTIVATIONS = {
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "quick_gelu": quick_gelu,
}


def activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def _dims(start: int, n: int) -> tuple[int, ...]:
  return tuple(range(start, start + n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def contract(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
  """x: [N, *in], kernel: [*in, *out] -> [N, *out], contracting the `n_in` dims.

  The same product as autodiff's, with a backward pass written as two plain
  dot_generals: dx = g . kernel^T over the output dims, and dkernel = x^T . g
  over the N rows. With the rows flattened into one leading dim, each is a
  single GEMM whose transposed operand the CPU library reads in place; autodiff
  of the [B, T, W] product contracts over (B, T) instead, which XLA:CPU meets
  with a materialised transpose of x or g for every weight gradient.
  """
  return jax.lax.dot_general(x, kernel, ((_dims(1, n_in), _dims(0, n_in)), ((), ())))


def _contract_fwd(x, kernel, n_in):
  return contract(x, kernel, n_in), (x, kernel)


def _contract_bwd(n_in, residuals, g):
  x, kernel = residuals
  n_out = kernel.ndim - n_in
  dx = jax.lax.dot_general(g, kernel, ((_dims(1, n_out), _dims(n_in, n_out)), ((), ())))
  dkernel = jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())))
  return dx, dkernel


contract.defvjp(_contract_fwd, _contract_bwd)


class Dense(nn.Module):
  """A linear layer over the last `in_axes` dims, onto `features` (int or tuple).

  The parameters are those of flax's nn.Dense (in_axes=1, int features) and
  nn.DenseGeneral (kernel [*in, *features], bias [*features], initialised at the
  flattened [fan_in, fan_out] shape), so checkpoints and weight maps carry over;
  the product runs as `contract` on rows flattened to [N, *in].

  x: [..., *in] -> [..., *features] in `dtype`.
  """

  features: int | tuple[int, ...]
  in_axes: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable = DEFAULT_KERNEL_INIT
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    n_in = self.in_axes
    in_shape = x.shape[x.ndim - n_in:]
    fan_in, fan_out = math.prod(in_shape), math.prod(features)
    kernel = self.param("kernel", _reshaped(self.kernel_init, (fan_in, fan_out)),
                        (*in_shape, *features))
    lead = x.shape[:x.ndim - n_in]
    y = contract(x.reshape(-1, *in_shape).astype(self.dtype), kernel.astype(self.dtype), n_in)
    y = y.reshape(*lead, *features)
    if self.use_bias:
      bias = self.param("bias", _reshaped(self.bias_init, (fan_out,)), features)
      y = y + bias.astype(self.dtype)
    return y


def _reshaped(init: Callable, flat_shape: tuple[int, ...]) -> Callable:
  """`init` drawn at `flat_shape` and reshaped to the param's shape, as flax's
  DenseGeneral does (so xavier's fans are those of the flattened matrix)."""
  def wrapper(rng, shape, dtype=jnp.float32):
    value = init(rng, flat_shape, dtype)
    if isinstance(value, nn.LogicallyPartitioned):
      return value.replace(value=value.value.reshape(shape))
    return value.reshape(shape)

  return wrapper


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
  """Pins an activation's layout by logical names (a no-op without rules/mesh)."""
  return nn.with_logical_constraint(x, names)


def LayerNorm(dtype: Dtype = jnp.float32, name: str | None = None,  # noqa: N802
              epsilon: float = 1e-6) -> nn.LayerNorm:
  """nn.LayerNorm with logically named scale and bias (statistics in float32).

  Flax's form keeps the [..., W] factor scale * rsqrt(var + eps) for the
  backward pass; a normalise-then-scale rewrite, which keeps only [..., 1],
  was measured 0.92x as fast on XLA:CPU (`experiments/benchmarks/layers.py`),
  so flax's stays.
  """
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, name=name,
      scale_init=logical(nn.initializers.ones, "embed"),
      bias_init=logical(nn.initializers.zeros, "embed"))


class MlpBlock(nn.Module):
  """Transformer MLP: Dense(mlp_dim) -> activation -> Dense(width).

  act: a name in ACTIVATIONS (default the tanh-approximate GELU: one fused
  elementwise op on every backend).

  x: [B, T, width] -> [B, T, width]
  """

  mlp_dim: int
  dtype: Dtype = jnp.float32
  act: str = "gelu_tanh"

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = Dense(
        self.mlp_dim,
        dtype=self.dtype,
        kernel_init=logical(DEFAULT_KERNEL_INIT, "embed", "mlp"),
        bias_init=logical(nn.initializers.zeros, "mlp"),
        name="fc1",
    )(x)
    h = constrain(h, "batch", "length", "mlp")
    h = activation(self.act)(h)
    return Dense(
        width,
        dtype=self.dtype,
        kernel_init=logical(DEFAULT_KERNEL_INIT, "mlp", "embed"),
        bias_init=logical(nn.initializers.zeros, "embed"),
        name="fc2",
    )(h)


def attend(q, k, v, mask=None, dtype=jnp.float32):
  """Scaled dot-product attention with the softmax in float32.

  q: [B, Q, H, Dh], k and v: [B, K, H, Dh], mask: optional bool broadcastable to
  [B, H, Q, K] (True = attend). Returns [B, Q, H, Dh].
  """
  q = q * (q.shape[-1] ** -0.5)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  if mask is not None:
    # A large negative (not -inf) keeps fully masked rows finite.
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused QKV projection.

  A fused [width, 3, heads, head_dim] projection is a single large matmul, which
  is what keeps small models near matmul throughput on CPUs and GPUs. The heads
  stay after the tokens ([B, T, H, Dh]): moving q, k, v to heads-major
  [B, H, T, Dh] makes the attention products 1.9x faster on XLA:CPU at a ViT's
  65 tokens, but the transposes there and back cost as much as that saves
  (`experiments/benchmarks/layers.py`).

  x: [B, T, width]; mask: optional bool [B, 1 | heads, T, T] (True = attend).
  Returns [B, T, width].
  """

  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(
          f"width {width} is not divisible by num_heads {self.num_heads}; "
          "choose num_heads that divides the tower width.")
    head_dim = width // self.num_heads
    qkv = Dense(
        (3, self.num_heads, head_dim),
        dtype=self.dtype,
        kernel_init=logical(DEFAULT_KERNEL_INIT, "embed", None, "heads", "kv"),
        bias_init=logical(nn.initializers.zeros, None, "heads", "kv"),
        name="qkv",
    )(x)
    # [B, T, H, Dh] each.
    out = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask, self.dtype)
    return Dense(
        width,
        in_axes=2,
        dtype=self.dtype,
        kernel_init=logical(DEFAULT_KERNEL_INIT, "heads", "kv", "embed"),
        bias_init=logical(nn.initializers.zeros, "embed"),
        name="out",
    )(out)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

  act, ln_eps: the MLP activation (ACTIVATIONS) and LayerNorm epsilon.

  x: [B, T, width] -> [B, T, width]
  """

  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, mask=None):
    x = constrain(x, "batch", "length", "embed")
    y = LayerNorm(dtype=self.dtype, name="ln1", epsilon=self.ln_eps)(x)
    x = x + SelfAttention(self.num_heads, dtype=self.dtype, name="attn")(y, mask)
    y = LayerNorm(dtype=self.dtype, name="ln2", epsilon=self.ln_eps)(x)
    x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, act=self.act, name="mlp")(y)
    return x


class Encoder(nn.Module):
  """A stack of `depth` EncoderBlocks and a final LayerNorm.

  `remat=True` recomputes each block's activations in the backward pass instead of
  storing them: less memory for a second forward pass per block.

  x: [B, T, width] -> [B, T, width]
  """

  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  remat: bool = False
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, mask=None):
    block = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, dtype=self.dtype, act=self.act,
                ln_eps=self.ln_eps, name=f"block{i}")(x, mask)
    return LayerNorm(dtype=self.dtype, name="ln_final", epsilon=self.ln_eps)(x)


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned query attends over all tokens,
  then a residual MLP (big_vision's MAPHead, SigLIP's image pooling).

  x: [B, T, width] -> [B, width]
  """

  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  act: str = "gelu_tanh"
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    b, _, width = x.shape
    probe = self.param("probe", logical(EMBED_INIT, None, None, "embed"), (1, 1, width))
    probe = jnp.broadcast_to(probe, (b, 1, width)).astype(self.dtype)
    head_dim = width // self.num_heads
    q = Dense((self.num_heads, head_dim), dtype=self.dtype, name="q",
                        kernel_init=logical(DEFAULT_KERNEL_INIT, "embed", "heads", "kv"),
                        bias_init=logical(nn.initializers.zeros, "heads", "kv"))(probe)
    kv = Dense((2, self.num_heads, head_dim), dtype=self.dtype, name="kv",
                         kernel_init=logical(DEFAULT_KERNEL_INIT, "embed", None, "heads", "kv"),
                         bias_init=logical(nn.initializers.zeros, None, "heads", "kv"))(x)
    y = attend(q, kv[:, :, 0], kv[:, :, 1], dtype=self.dtype)
    y = Dense(width, in_axes=2, dtype=self.dtype, name="out",
                        kernel_init=logical(DEFAULT_KERNEL_INIT, "heads", "kv", "embed"),
                        bias_init=logical(nn.initializers.zeros, "embed"))(y)
    y = y + MlpBlock(self.mlp_dim, dtype=self.dtype, act=self.act, name="mlp")(
        LayerNorm(dtype=self.dtype, name="ln", epsilon=self.ln_eps)(y))
    return y[:, 0]
