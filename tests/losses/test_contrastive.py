"""Tests for mmjax.losses.contrastive against a float64 NumPy reference.

The reference is written differently on purpose: explicit loops over rows and
columns, a hand-written stable log-sum-exp / log-sigmoid, and gradients by
central finite differences.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.losses import contrastive


def _logsumexp(xs):
  m = max(xs)
  return m + math.log(sum(math.exp(x - m) for x in xs))


def _log_sigmoid(x):
  if x >= 0:
    return -math.log1p(math.exp(-x))
  return x - math.log1p(math.exp(x))


def _dot(a, b):
  return sum(float(x) * float(y) for x, y in zip(a, b))


def ref_softmax(zimg, ztxt, scale):
  b = len(zimg)
  logits = [[scale * _dot(zimg[i], ztxt[j]) for j in range(b)] for i in range(b)]
  rows = sum(_logsumexp(logits[i]) - logits[i][i] for i in range(b)) / b
  cols = sum(_logsumexp([logits[i][j] for i in range(b)]) - logits[j][j]
             for j in range(b)) / b
  return 0.5 * (rows + cols)


def ref_sigmoid(zimg, ztxt, scale, bias):
  b = len(zimg)
  total = 0.0
  for i in range(b):
    for j in range(b):
      label = 1.0 if i == j else -1.0
      total -= _log_sigmoid(label * (scale * _dot(zimg[i], ztxt[j]) + bias))
  return total / b


def fd_grad(f, x, h=1e-6):
  """Central finite differences of scalar f at x, in float64."""
  x = np.array(x, dtype=np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g


def ref_grads(ref, args, h=1e-6):
  """Finite-difference gradient of ref w.r.t. each of args."""
  grads = []
  for k in range(len(args)):
    def f(x, k=k):
      return ref(*args[:k], x, *args[k + 1:])
    grads.append(fd_grad(f, args[k], h))
  return grads


def embeddings(seed, b, d, dtype=np.float32):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(2, b, d))
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  return z[0].astype(dtype), z[1].astype(dtype)


def _as64(*xs):
  return [np.asarray(x, np.float64) for x in xs]


def check_softmax(zimg, ztxt, scale, rtol, atol):
  loss, grads = jax.value_and_grad(contrastive.softmax_contrastive,
                                   argnums=(0, 1, 2))(zimg, ztxt, scale)
  args = _as64(zimg, ztxt, scale)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, ref_softmax(*args), rtol=rtol, atol=atol)
  for got, want in zip(grads, ref_grads(ref_softmax, args)):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=rtol,
                               atol=atol * max(1.0, np.abs(want).max()))


def check_sigmoid(zimg, ztxt, scale, bias, rtol, atol):
  loss, grads = jax.value_and_grad(contrastive.sigmoid_contrastive,
                                   argnums=(0, 1, 2, 3))(zimg, ztxt, scale, bias)
  args = _as64(zimg, ztxt, scale, bias)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, ref_sigmoid(*args), rtol=rtol, atol=atol)
  for got, want in zip(grads, ref_grads(ref_sigmoid, args)):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=rtol,
                               atol=atol * max(1.0, np.abs(want).max()))


def test_random_batch_matches_reference():
  zimg, ztxt = embeddings(0, 5, 8)
  scale, bias = np.float32(3.0), np.float32(-1.5)
  check_softmax(zimg, ztxt, scale, rtol=1e-5, atol=1e-5)
  check_sigmoid(zimg, ztxt, scale, bias, rtol=1e-5, atol=1e-5)


def test_batch_of_one():
  zimg, ztxt = embeddings(1, 1, 8)
  scale, bias = np.float32(5.0), np.float32(-2.0)
  # A single pair has no negatives: the softmax loss and its gradient vanish.
  loss, grads = jax.value_and_grad(contrastive.softmax_contrastive,
                                   argnums=(0, 1, 2))(zimg, ztxt, scale)
  assert loss == 0.0
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)
  check_sigmoid(zimg, ztxt, scale, bias, rtol=1e-5, atol=1e-5)


def test_huge_logits_stay_finite_and_correct():
  # scale 1e4 puts logits in the thousands: exp() overflows float32 without
  # log-sum-exp / softplus stabilisation.
  zimg, ztxt = embeddings(2, 5, 8)
  scale, bias = np.float32(1e4), np.float32(-10.0)
  # float32 dot products are exact to ~1e-7, i.e. ~1e-3 in a 1e4-scaled logit.
  check_softmax(zimg, ztxt, scale, rtol=1e-4, atol=1e-3)
  check_sigmoid(zimg, ztxt, scale, bias, rtol=1e-4, atol=1e-3)


def test_huge_logits_with_aligned_pairs_give_zero_softmax_loss():
  zimg, _ = embeddings(3, 4, 8)
  loss = contrastive.softmax_contrastive(zimg, zimg, 1e4)
  # Every diagonal beats its row and column by thousands of nats.
  assert np.isfinite(loss) and 0.0 <= loss < 1e-6


@pytest.mark.parametrize("loss_name", ["softmax", "sigmoid"])
def test_bfloat16_inputs_compute_in_float32(loss_name):
  zimg, ztxt = embeddings(4, 6, 16)
  if loss_name == "softmax":
    fn = lambda a, b: contrastive.softmax_contrastive(a, b, 10.0)
  else:
    fn = lambda a, b: contrastive.sigmoid_contrastive(a, b, 10.0, -5.0)
  zimg16, ztxt16 = jnp.asarray(zimg, jnp.bfloat16), jnp.asarray(ztxt, jnp.bfloat16)
  got = fn(zimg16, ztxt16)
  assert got.dtype == jnp.float32
  # Close to the float32 loss, up to bfloat16 rounding of the inputs...
  np.testing.assert_allclose(got, fn(zimg, ztxt), rtol=2e-2)
  # ...and equal to float32 arithmetic on the rounded inputs: the logits were
  # not computed in bfloat16.
  np.testing.assert_allclose(
      got, fn(zimg16.astype(jnp.float32), ztxt16.astype(jnp.float32)), rtol=1e-6)


def test_jit_and_grad_with_traced_scale_and_bias():
  zimg, ztxt = embeddings(5, 5, 8)
  args = (zimg, ztxt, np.float32(2.0), np.float32(-1.0))
  soft = jax.jit(jax.value_and_grad(contrastive.softmax_contrastive,
                                    argnums=(0, 1, 2)))(*args[:3])
  sig = jax.jit(jax.value_and_grad(contrastive.sigmoid_contrastive,
                                   argnums=(0, 1, 2, 3)))(*args)
  ref64 = _as64(*args)
  np.testing.assert_allclose(soft[0], ref_softmax(*ref64[:3]), rtol=1e-5)
  np.testing.assert_allclose(sig[0], ref_sigmoid(*ref64), rtol=1e-5)
  want_soft = ref_grads(ref_softmax, ref64[:3])
  want_sig = ref_grads(ref_sigmoid, ref64)
  for got, want in zip(soft[1] + sig[1], want_soft + want_sig):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_sigmoid_at_siglip_init_on_orthogonal_embeddings():
  b = 4
  q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(2 * b, 2 * b)))
  q = q.T.astype(np.float32)  # Orthonormal rows.
  scale, bias = 10.0, -10.0
  # All 2b vectors mutually orthogonal: every logit equals the bias, -10.
  # Positives cost softplus(10), each of the b - 1 negatives softplus(-10).
  want = math.log1p(math.exp(10.0)) + (b - 1) * math.log1p(math.exp(-10.0))
  got = contrastive.sigmoid_contrastive(q[:b], q[b:], scale, bias)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Matching pairs identical: positives score 0 (cost log 2), negatives -10.
  want = math.log(2.0) + (b - 1) * math.log1p(math.exp(-10.0))
  got = contrastive.sigmoid_contrastive(q[:b], q[:b], scale, bias)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pairwise_logits_shape_dtype_and_bias():
  zimg, ztxt = embeddings(7, 3, 8)
  logits = contrastive.pairwise_logits(
      jnp.asarray(zimg, jnp.bfloat16), ztxt[:2], 2.0, bias=-1.0)
  assert logits.shape == (3, 2) and logits.dtype == jnp.float32
  want = 2.0 * np.asarray(jnp.asarray(zimg, jnp.bfloat16), np.float64) @ ztxt[:2].T - 1.0
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)


def test_mismatched_batches_fail_at_trace_time():
  zimg, ztxt = embeddings(8, 4, 8)
  with pytest.raises(ValueError, match="same number of pairs"):
    contrastive.softmax_contrastive(zimg, ztxt[:3], 1.0)
  with pytest.raises(ValueError, match="embedding widths"):
    contrastive.sigmoid_contrastive(zimg, ztxt[:, :4], 1.0, 0.0)
