"""Tests for mmjax.losses.alignment against a float64 NumPy reference.

The reference loops over rows explicitly and differentiates by central finite
differences.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.losses import alignment


def _logsumexp(xs):
  m = max(xs)
  return m + math.log(sum(math.exp(x - m) for x in xs))


def _kl_rows(student, teacher):
  """Mean over rows of sum_j p_t (log p_t - log p_s)."""
  total = 0.0
  for srow, trow in zip(student, teacher):
    s_lse, t_lse = _logsumexp(list(srow)), _logsumexp(list(trow))
    for s, t in zip(srow, trow):
      log_pt, log_ps = t - t_lse, s - s_lse
      total += math.exp(log_pt) * (log_pt - log_ps)
  return total / len(student)


def ref_kl(student, teacher):
  student, teacher = np.asarray(student), np.asarray(teacher)
  return 0.5 * (_kl_rows(student, teacher) + _kl_rows(student.T, teacher.T))


def ref_mse(zimg, ztxt):
  return sum(sum((a - b) ** 2 for a, b in zip(x, y))
             for x, y in zip(zimg, ztxt)) / len(zimg)


def ref_cosine(zimg, ztxt):
  total = 0.0
  for x, y in zip(zimg, ztxt):
    dot = sum(a * b for a, b in zip(x, y))
    total += 1.0 - dot / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))
  return total / len(zimg)


def fd_grad(f, x, h=1e-6):
  x = np.array(x, dtype=np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g


def check(fn, ref, a, b, rtol=1e-5, atol=1e-6):
  loss, (ga, gb) = jax.value_and_grad(fn, argnums=(0, 1))(a, b)
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, ref(a64, b64), rtol=rtol, atol=atol)
  np.testing.assert_allclose(ga, fd_grad(lambda x: ref(x, b64), a64),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gb, fd_grad(lambda x: ref(a64, x), b64),
                             rtol=1e-4, atol=1e-5)
  return float(loss)


def random(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def test_kl_matches_reference_in_value_and_gradient():
  # Non-square, as when a batch is scored against a larger text gallery.
  student, teacher = random(0, 4, 6, scale=3.0), random(1, 4, 6, scale=3.0)
  got = check(alignment.kl_alignment, ref_kl, student, teacher)
  # KL is asymmetric; the reference fixes the direction to KL(teacher||student).
  assert abs(got - ref_kl(np.float64(teacher), np.float64(student))) > 1e-2


def test_kl_is_exactly_zero_for_equal_logits():
  logits = random(2, 5, 5, scale=3.0)
  assert alignment.kl_alignment(logits, logits) == 0.0
  huge = random(3, 5, 5, scale=1e4)
  assert alignment.kl_alignment(huge, huge) == 0.0
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  assert alignment.kl_alignment(bf16, bf16) == 0.0
  # Zero is the minimum: the gradient vanishes there too.
  grad = jax.grad(alignment.kl_alignment)(logits, logits)
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)


def test_kl_with_huge_logits_is_finite_and_correct():
  # Near one-hot distributions: the teacher puts exp(-1e4) mass on most
  # entries, which underflows to 0 and must not become 0 * inf.
  student, teacher = random(4, 4, 5, scale=1e4), random(5, 4, 5, scale=1e4)
  got, grads = jax.value_and_grad(alignment.kl_alignment, argnums=(0, 1))(
      student, teacher)
  np.testing.assert_allclose(
      got, ref_kl(np.float64(student), np.float64(teacher)), rtol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_mse_matches_reference():
  zimg, ztxt = random(6, 5, 8), random(7, 5, 8)
  check(alignment.mse_alignment, ref_mse, zimg, ztxt)
  # Sum over features, mean over pairs: one unit offset in one feature of
  # every pair costs exactly 1.
  shifted = zimg.copy()
  shifted[:, 3] += 1.0
  np.testing.assert_allclose(alignment.mse_alignment(zimg, shifted), 1.0, rtol=1e-6)


def test_cosine_matches_reference_and_ignores_norms():
  zimg, ztxt = random(8, 5, 8), random(9, 5, 8)
  got = check(alignment.cosine_alignment, ref_cosine, zimg, ztxt)
  scaled = alignment.cosine_alignment(3.0 * zimg, 0.5 * ztxt)
  np.testing.assert_allclose(scaled, got, rtol=1e-5)


def test_cosine_known_angles_and_zero_vector():
  e = np.eye(3, dtype=np.float32)
  np.testing.assert_allclose(alignment.cosine_alignment(e, e), 0.0, atol=1e-7)
  np.testing.assert_allclose(alignment.cosine_alignment(e, np.roll(e, 1, 0)), 1.0)
  np.testing.assert_allclose(alignment.cosine_alignment(e, -e), 2.0)
  # An all-zero embedding (e.g. padding) must not poison the step with NaN.
  z = e.copy()
  z[0] = 0.0
  loss, grad = jax.value_and_grad(alignment.cosine_alignment)(z, e)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_shape_mismatch_names_the_loss():
  with pytest.raises(ValueError, match="kl_alignment"):
    alignment.kl_alignment(np.zeros((4, 4)), np.zeros((4, 5)))
  with pytest.raises(ValueError, match="mse_alignment"):
    alignment.mse_alignment(np.zeros((4, 8)), np.zeros((3, 8)))


def _unit_rows(x):
  return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), 1e-12))


def ref_mse_to_teacher(zimg, ztxt, timg, ttxt, w=None):
  """0.5 * (mean_i ||p(zimg_i) - timg_i||^2 + the same for text), p(z) =
  normalize(z @ w) with a map, the identity without."""
  if w is not None:
    zimg, ztxt = _unit_rows(zimg @ w), _unit_rows(ztxt @ w)
  return 0.5 * (ref_mse(zimg, timg) + ref_mse(ztxt, ttxt))


def test_mse_to_teacher_matches_reference_without_a_map():
  zimg, ztxt = _unit_rows(random(10, 4, 6)), _unit_rows(random(11, 4, 6))
  timg, ttxt = _unit_rows(random(12, 4, 6)), _unit_rows(random(13, 4, 6))
  fn = lambda a, b: alignment.mse_to_teacher(a, b, timg, ttxt)
  ref = lambda a, b: ref_mse_to_teacher(a, b, np.float64(timg), np.float64(ttxt))
  got = check(fn, ref, zimg, ztxt)
  np.testing.assert_allclose(
      got, 0.5 * (alignment.mse_alignment(zimg, timg) + alignment.mse_alignment(ztxt, ttxt)),
      rtol=1e-6)
  # Equal embeddings: exactly zero, and so is the gradient.
  assert alignment.mse_to_teacher(zimg, ztxt, zimg, ztxt) == 0.0
  grads = jax.grad(alignment.mse_to_teacher, argnums=(0, 1))(zimg, ztxt, zimg, ztxt)
  assert all(np.all(np.asarray(g) == 0.0) for g in grads)


def test_mse_to_teacher_with_a_map_matches_reference_in_value_and_gradient():
  # A 5-d student mapped into a 7-d teacher space.
  zimg, ztxt = _unit_rows(random(14, 4, 5)), _unit_rows(random(15, 4, 5))
  timg, ttxt = _unit_rows(random(16, 4, 7)), _unit_rows(random(17, 4, 7))
  w = random(18, 5, 7)
  args64 = [np.float64(x) for x in (zimg, ztxt, timg, ttxt, w)]
  loss, grads = jax.value_and_grad(alignment.mse_to_teacher, argnums=(0, 1, 4))(
      zimg, ztxt, timg, ttxt, w)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, ref_mse_to_teacher(*args64), rtol=1e-5)
  for grad, argnum in zip(grads, (0, 1, 4)):
    def f(x, argnum=argnum):
      args = list(args64)
      args[argnum] = x
      return ref_mse_to_teacher(*args)
    np.testing.assert_allclose(grad, fd_grad(f, args64[argnum]), rtol=1e-4, atol=1e-5)
  # The map's scale is invisible: the mapped embeddings are renormalised.
  np.testing.assert_allclose(alignment.mse_to_teacher(zimg, ztxt, timg, ttxt, 3.0 * w),
                             loss, rtol=1e-5)
  # Zero when the mapped student points where the teacher does.
  np.testing.assert_allclose(alignment.mse_to_teacher(
      zimg, ztxt, _unit_rows(zimg @ w), _unit_rows(ztxt @ w), w), 0.0, atol=1e-6)


def test_mse_to_teacher_names_the_missing_projection():
  z5, z7 = np.ones((4, 5), np.float32), np.ones((4, 7), np.float32)
  with pytest.raises(ValueError, match=r"projection_dim=7"):
    alignment.mse_to_teacher(z5, z5, z7, z7)
  with pytest.raises(ValueError, match=r"to_teacher has shape \(7, 5\).*\[5, 7\]"):
    alignment.mse_to_teacher(z5, z5, z7, z7, np.ones((7, 5), np.float32))
