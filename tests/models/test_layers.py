"""The rewritten layers against flax's own modules and a direct formula.

Dense (flattened rows, a hand-written backward pass) and the self-attention
and MLP built on it must give the value and the gradient of what they replace,
with the same parameters, so checkpoints and weight maps carry over unchanged.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import layers

TOL = dict(rtol=1e-5, atol=1e-5)


def unboxed(tree):
  return nn.meta.unbox(tree)


def value_and_grads(fn, params, x, seed=3):
  """A loss that weighs every output element differently (a plain sum of
  squares after a LayerNorm has a zero gradient), its value and gradients."""
  probe = jax.random.normal(jax.random.key(seed), jax.eval_shape(fn, params, x).shape)
  return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(fn(p, x)) * probe),
                            argnums=(0, 1))(params, x)


def assert_same(a, b):
  for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), err_msg=jax.tree_util.keystr(path),
                               **TOL)


@pytest.mark.parametrize("features,in_axes,x_shape", [
    (24, 1, (3, 5, 16)),               # nn.Dense on [B, T, W]
    ((3, 2, 4), 1, (3, 5, 16)),        # the fused qkv projection
    (16, 2, (2, 7, 2, 4)),             # the attention output projection
    (8, 1, (6, 16)),                   # a plain [N, W] input
])
def test_dense_matches_flax_dense_general(features, in_axes, x_shape):
  x = jax.random.normal(jax.random.key(0), x_shape)
  axis = tuple(range(-in_axes, 0))
  ours = layers.Dense(features, in_axes=in_axes)
  theirs = nn.DenseGeneral(features, axis=axis, kernel_init=layers.DEFAULT_KERNEL_INIT,
                           bias_init=nn.initializers.normal(1.0))
  params = unboxed(ours.init(jax.random.key(1), x))
  reference_params = theirs.init(jax.random.key(1), x)
  # Same initial kernel (xavier at the flattened fans, the same rng path).
  np.testing.assert_array_equal(params["params"]["kernel"],
                                reference_params["params"]["kernel"])
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference_params)
  # A non-zero bias, so its gradient path is checked too.
  v1, g1 = value_and_grads(ours.apply, reference_params, x)
  v2, g2 = value_and_grads(theirs.apply, reference_params, x)
  np.testing.assert_allclose(v1, v2, **TOL)
  assert_same(g1, g2)


def test_contract_gradient_matches_a_direct_formula():
  x = jax.random.normal(jax.random.key(0), (7, 4, 3))
  w = jax.random.normal(jax.random.key(1), (4, 3, 5, 2))
  g = jax.random.normal(jax.random.key(2), (7, 5, 2))
  _, vjp = jax.vjp(lambda x, w: layers.contract(x, w, 2), x, w)
  dx, dw = vjp(g)
  np.testing.assert_allclose(dx, np.einsum("nab,ijab->nij", g, w), **TOL)
  np.testing.assert_allclose(dw, np.einsum("nij,nab->ijab", x, g), **TOL)


def test_dense_in_bfloat16_computes_in_bfloat16_with_float32_params():
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  dense = layers.Dense(4, dtype=jnp.bfloat16)
  params = dense.init(jax.random.key(1), x)
  assert unboxed(params)["params"]["kernel"].dtype == jnp.float32
  y = dense.apply(params, x)
  assert y.dtype == jnp.bfloat16
  reference = nn.Dense(4, dtype=jnp.bfloat16).apply(unboxed(params), x)
  np.testing.assert_allclose(np.float32(y), np.float32(reference), rtol=1e-2, atol=1e-2)


def direct_attention(params, x, mask, num_heads):
  """Multi-head self-attention written head by head with plain matrices."""
  p = params["params"]
  b, t, w = x.shape
  dh = w // num_heads
  qkv = x @ p["qkv"]["kernel"].reshape(w, 3 * w) + p["qkv"]["bias"].reshape(3 * w)
  qkv = qkv.reshape(b, t, 3, num_heads, dh)
  heads = []
  for h in range(num_heads):
    q, k, v = (qkv[:, :, i, h] for i in range(3))
    logits = q @ jnp.swapaxes(k, 1, 2) / np.sqrt(dh)
    if mask is not None:
      logits = jnp.where(mask[:, 0], logits, -1e30)
    heads.append(jax.nn.softmax(logits, axis=-1) @ v)
  return jnp.concatenate(heads, axis=-1) @ p["out"]["kernel"].reshape(w, w) + p["out"]["bias"]


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_a_direct_formula(causal):
  b, t, w, heads = 3, 6, 16, 4
  x = jax.random.normal(jax.random.key(0), (b, t, w))
  mask = jnp.tril(jnp.ones((t, t), bool))[None, None] if causal else None
  module = layers.SelfAttention(heads)
  params = unboxed(module.init(jax.random.key(1), x, mask))
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  assert params["params"]["qkv"]["kernel"].shape == (w, 3, heads, w // heads)
  assert params["params"]["out"]["kernel"].shape == (heads, w // heads, w)
  v1, g1 = value_and_grads(lambda p, x: module.apply(p, x, mask), params, x)
  v2, g2 = value_and_grads(lambda p, x: direct_attention(p, x, mask, heads), params, x)
  np.testing.assert_allclose(v1, v2, **TOL)
  assert_same(g1, g2)
