"""Tests for mmjax.losses.distributed on 8 simulated CPU devices.

The reference is the single-device loss on the global batch (itself tested
against a float64 NumPy reference in test_contrastive.py). Each jitted
function computes both losses and all their gradients, so a mesh costs one
compile.
"""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from mmjax import losses
from mmjax.losses import contrastive
from mmjax.losses import distributed
from mmjax.losses import sharded
from mmjax.losses import registry

AXES = ("data", "fsdp", "tensor")
BATCH, DIM = 16, 8


@pytest.fixture(scope="module")
def batch():
  kimg, ktxt = jax.random.split(jax.random.key(0))
  zimg = jax.random.normal(kimg, (BATCH, DIM))
  ztxt = jax.random.normal(ktxt, (BATCH, DIM))
  zimg /= jnp.linalg.norm(zimg, axis=-1, keepdims=True)
  ztxt /= jnp.linalg.norm(ztxt, axis=-1, keepdims=True)
  # A bias well away from 0 so the positives and negatives weigh differently.
  return zimg, ztxt, jnp.float32(10.0), jnp.float32(-5.0)


def _both(softmax, sigmoid):
  """(value, grads) of both losses; grads w.r.t. every argument."""
  def fn(zimg, ztxt, scale, bias):
    return (jax.value_and_grad(softmax, argnums=(0, 1, 2))(zimg, ztxt, scale),
            jax.value_and_grad(sigmoid, argnums=(0, 1, 2, 3))(
                zimg, ztxt, scale, bias))
  return fn


@pytest.fixture(scope="module")
def reference(batch):
  return jax.jit(_both(contrastive.softmax_contrastive,
                       contrastive.sigmoid_contrastive))(*batch)


def _sharded(mesh, batch_axes):
  return _both(
      lambda *a: sharded.sharded_softmax_contrastive(
          *a, mesh=mesh, batch_axes=batch_axes),
      lambda *a: sharded.sharded_sigmoid_contrastive(
          *a, mesh=mesh, batch_axes=batch_axes))


def _assert_matches(got, want):
  for (value, grads), (ref_value, ref_grads) in zip(got, want):
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert len(grads) == len(ref_grads)
    for g, ref_g in zip(grads, ref_grads):
      assert g.shape == ref_g.shape
      np.testing.assert_allclose(g, ref_g, atol=1e-5)


@pytest.mark.parametrize("shape, axis_types", [
    ((8, 1, 1), None),
    ((4, 2, 1), None),
    ((2, 2, 2), None),
    ((1, 8, 1), None),
    # The train step may build its mesh with Auto axes (no resharding needed
    # before shard_map); make_mesh defaults to Explicit.
    ((2, 2, 2), (AxisType.Auto,) * 3),
], ids=["8x1x1", "4x2x1", "2x2x2", "1x8x1", "2x2x2-auto"])
def test_matches_single_device(batch, reference, shape, axis_types):
  mesh = jax.make_mesh(shape, AXES, axis_types=axis_types)
  compiled = jax.jit(_sharded(mesh, ("data", "fsdp"))).lower(*batch).compile()
  _assert_matches(compiled(*batch), reference)
  # The point of these forms: no device ever holds the global B x B logits.
  assert not re.search(rf"\[{BATCH},{BATCH}\]", compiled.as_text())


def test_single_axis_name_under_set_mesh(batch, reference):
  # A plain string axis; 'fsdp' (size 2) is not a batch axis here, so the
  # batch is replicated over it, like 'tensor'.
  mesh = jax.make_mesh((4, 2, 1), AXES)
  with jax.set_mesh(mesh):
    got = jax.jit(_sharded(mesh, "data"))(*batch)
  _assert_matches(got, reference)


def test_ring_holds_one_local_block(batch):
  mesh = jax.make_mesh((8, 1, 1), AXES)
  local = BATCH // 8
  hlo = jax.jit(jax.grad(
      lambda *a: sharded.sharded_sigmoid_contrastive(*a, mesh=mesh),
      argnums=(0, 1, 2, 3))).lower(*batch).compile().as_text()
  shapes = set(re.findall(r"f32\[(\d+),(\d+)\]", hlo))
  assert (str(local), str(local)) in shapes
  # Neither the B x B logits nor B_local x B (the gather form) nor a stack
  # of received text chunks: every 2-D buffer is local-sized.
  assert all(int(r) <= local for r, _ in shapes), shapes


def test_ring_tiles_match_and_never_form_the_block(batch, reference):
  # B_local = 4 on 4 devices; tile_rows=3 is not a divisor, so tiles of 2
  # rows are used: two [2, 4] tiles per block, never the [4, 4] block.
  mesh = jax.make_mesh((4, 1, 1), AXES)
  ring = lambda *a: sharded.sharded_sigmoid_contrastive(*a, mesh=mesh, tile_rows=3)
  grad = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2, 3))).lower(*batch).compile()
  value, grads = grad(*batch)
  _assert_matches([(value, grads)], [reference[1]])
  shapes = set(re.findall(r"f32\[(\d+),(\d+)\]", grad.as_text()))
  assert ("2", "4") in shapes and ("4", "4") not in shapes, shapes
  # The value alone takes the primal path (no gradients carried round).
  np.testing.assert_allclose(jax.jit(ring)(*batch), reference[1][0], rtol=1e-5)


@pytest.mark.parametrize("local, tile_rows, rows", [
    (2048, None, distributed.DEFAULT_TILE_ROWS), (12, 5, 4), (7, 512, 7), (8, 8, 8)])
def test_tile_rows_divide_the_local_batch(local, tile_rows, rows):
  assert distributed._tile_rows(local, tile_rows) == rows  # pylint: disable=protected-access


def test_tile_rows_must_be_positive(batch):
  mesh = jax.make_mesh((2, 1, 1), AXES)
  with pytest.raises(ValueError, match="tile_rows=0; use a positive"):
    sharded.sharded_sigmoid_contrastive(*batch, mesh=mesh, tile_rows=0)


def test_indivisible_batch_names_the_fix(batch):
  mesh = jax.make_mesh((8, 1, 1), AXES)
  zimg, ztxt, scale, bias = (x[:12] if x.ndim else x for x in batch)
  with pytest.raises(ValueError, match=r"batch size 12 .* 8 devices") as err:
    jax.jit(lambda a, b: sharded.sharded_sigmoid_contrastive(
        a, b, scale, bias, mesh=mesh))(zimg, ztxt)
  message = str(err.value)
  assert "'data': 8" in message and "'fsdp': 1" in message
  assert "multiple of 8" in message and "e.g. 16" in message
  with pytest.raises(ValueError, match="batch size 12"):
    sharded.sharded_softmax_contrastive(zimg, ztxt, scale, mesh=mesh)


def _choose(name, impl, mesh, batch_axes=("data", "fsdp")):
  """The form of the loss registered as `name`, as build.loss_fn picks it."""
  fn = registry.get(name)
  return losses.choose_form(fn, registry.distributed_forms(fn), impl, mesh, batch_axes)


def test_unknown_batch_axis():
  mesh = jax.make_mesh((8, 1, 1), AXES)
  with pytest.raises(ValueError, match="'model'.*not axes of the mesh"):
    _choose("softmax_contrastive", "gather", mesh, ("data", "model"))


@pytest.mark.parametrize("name, impl, form", [
    ("softmax_contrastive", "gather", sharded.sharded_softmax_contrastive),
    ("sigmoid_contrastive", "ring", sharded.sharded_sigmoid_contrastive),
])
def test_distributed_form_auto_on_many_devices(name, impl, form):
  mesh = jax.make_mesh((4, 2, 1), AXES)
  for choice in ("auto", impl):
    fn = _choose(name, choice, mesh, ("data", "fsdp"))
    assert fn.func is form
    assert fn.keywords == {"mesh": mesh, "batch_axes": ("data", "fsdp")}
    # Same required parameters as the single-device loss, so the terms can
    # bind it by name from the model outputs.
    required = [p.name for p in inspect.signature(fn).parameters.values()
                if p.default is p.empty]
    assert required == list(inspect.signature(registry.get(name)).parameters)


def test_distributed_form_single_device_and_naive():
  # The batch axes span one device: 'auto' falls back to the plain loss.
  mesh = jax.make_mesh((1, 1, 8), AXES)
  with_forms = [n for n in registry.names() if registry.distributed_forms(registry.get(n))]
  assert with_forms == ["sigmoid_contrastive", "softmax_contrastive"]
  for name in with_forms:
    plain = registry.get(name)
    assert _choose(name, "auto", mesh) is plain
    assert _choose(name, "naive", mesh) is plain
    assert _choose(name, "naive", None) is plain
  # Losses without a distributed form run as they are, whatever the impl.
  mse = registry.get("mse_alignment")
  assert _choose("mse_alignment", "auto", mesh) is mse
  assert _choose("mse_alignment", "auto", jax.make_mesh((8, 1, 1), AXES)) is mse
  assert _choose("mse_alignment", "ring", None) is mse


def test_distributed_form_invalid_choice():
  mesh = jax.make_mesh((8, 1, 1), AXES)
  with pytest.raises(ValueError, match=r"no 'ring' form.*'auto', 'naive', 'gather'"):
    _choose("softmax_contrastive", "ring", mesh)
  with pytest.raises(ValueError, match=r"no 'gather' form.*'auto', 'naive', 'ring'"):
    _choose("sigmoid_contrastive", "gather", mesh)
  with pytest.raises(ValueError, match=r"unknown loss impl 'chunked'.*'ring'"):
    _choose("sigmoid_contrastive", "chunked", mesh)
  with pytest.raises(ValueError, match="needs the device mesh"):
    _choose("sigmoid_contrastive", "ring", None)


def test_public_names():
  assert losses.choose_form is sharded.choose_form
  assert losses.distributed_forms is registry.distributed_forms
  assert losses.sharded_sigmoid_contrastive is sharded.sharded_sigmoid_contrastive
  assert losses.sharded_softmax_contrastive is sharded.sharded_softmax_contrastive
  assert losses.sigmoid_contrastive_ring is distributed.sigmoid_contrastive_ring
  assert losses.softmax_contrastive_gather is distributed.softmax_contrastive_gather
  # The forms are kept with the single-device functions themselves.
  assert registry.distributed_forms(contrastive.softmax_contrastive) == {
      "gather": sharded.sharded_softmax_contrastive}
  assert registry.distributed_forms(contrastive.sigmoid_contrastive) == {
      "ring": sharded.sharded_sigmoid_contrastive}
