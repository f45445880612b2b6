"""The logical-axis rules and the shardings derived from them."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mmjax.parallel import mesh as mesh_lib
from mmjax.parallel import multihost, partitioning


def _mesh(data, fsdp, tensor):
  return mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp,
                                                           tensor=tensor)))


@pytest.mark.parametrize("logical,expected", [
    (P("embed", "mlp"), P("fsdp", "tensor")),                       # fc1 kernel
    (P("mlp", "embed"), P("tensor", "fsdp")),                       # fc2 kernel
    (P("embed", None, "heads", "kv"), P("fsdp", None, "tensor", None)),  # qkv kernel
    (P("vocab", "embed"), P("tensor", "fsdp")),                     # token embedding
    (P("conv_out", "embed"), P(None, "fsdp")),                      # fsdp used once
    (P(None, None, "conv_in", "conv_out"), P(None, None, None, "fsdp")),
    (P("embed", "joint"), P("fsdp", None)),
    (P(), P()),                                                     # scalars
    # Activations: the batch takes fsdp, so the features stay whole.
    (P("batch", "length", "embed"), P(("data", "fsdp"), None, None)),
    (P("batch", "length", "mlp"), P(("data", "fsdp"), None, "tensor")),
])
def test_rules(logical, expected):
  assert partitioning.mesh_axes(logical) == expected


def test_every_logical_name_the_models_use_has_a_rule():
  names = {name for name, _ in partitioning.RULES}
  assert {"batch", "length", "embed", "mlp", "heads", "kv", "vocab", "joint",
          "conv_in", "conv_out"} <= names


def test_non_divisible_dimension_is_replicated_with_one_warning(caplog):
  mesh = _mesh(1, 2, 4)
  specs = {"attn": {"kernel": P("embed", "heads")}, "fc1": {"kernel": P("embed", "mlp")},
           "ln": {"scale": P("embed")}}
  shapes = {"attn": {"kernel": jax.ShapeDtypeStruct((16, 6), jnp.float32)},
            "fc1": {"kernel": jax.ShapeDtypeStruct((16, 64), jnp.float32)},
            "ln": {"scale": jax.ShapeDtypeStruct((15,), jnp.float32)}}
  with caplog.at_level(logging.WARNING):
    out = partitioning.param_shardings(specs, shapes, mesh)
  assert out["attn"]["kernel"].spec == P("fsdp", None)
  assert out["fc1"]["kernel"].spec == P("fsdp", "tensor")
  assert out["ln"]["scale"].spec == P(None)
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  msg = warnings[0].getMessage()
  assert "attn/kernel (16, 6)" in msg and "'tensor' of size 4" in msg and "(heads)" in msg
  assert "ln/scale (15,)" in msg and "'fsdp' of size 2" in msg
  assert "fc1" not in msg
  # The fallback sharding is usable: placing an array there does not fail.
  x = jax.device_put(np.zeros((16, 6), np.float32), out["attn"]["kernel"])
  assert x.sharding.spec == P("fsdp", None)


def test_optimizer_state_follows_its_params():
  mesh = _mesh(2, 2, 2)
  params = {"dense": {"kernel": jnp.zeros((8, 16)), "bias": jnp.zeros((16,))},
            "log_scale": jnp.zeros(())}
  specs = {"dense": {"kernel": P("embed", "mlp"), "bias": P("mlp")}, "log_scale": P()}
  param_sh = partitioning.param_shardings(specs, params, mesh)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  abstract = jax.eval_shape(lambda p: {"params": p, "opt": tx.init(p),
                                       "step": jnp.zeros((), jnp.int32)}, params)
  sh = partitioning.state_shardings(abstract, param_sh, mesh)
  adam = sh["opt"][1][0]
  assert adam.mu["dense"]["kernel"].spec == P("fsdp", "tensor")
  assert adam.nu["dense"]["bias"].spec == P("tensor")
  assert adam.count.spec == P()
  assert sh["step"].spec == P()
  assert sh["params"]["dense"]["kernel"] == param_sh["dense"]["kernel"]
  # The whole state can be created directly in that layout.
  state = jax.jit(lambda p: {"params": p, "opt": tx.init(p),
                             "step": jnp.zeros((), jnp.int32)}, out_shardings=sh)(params)
  assert state["opt"][1][0].mu["dense"]["kernel"].sharding.spec == P("fsdp", "tensor")


def test_constraints_resolve_inside_activate():
  mesh = _mesh(2, 2, 2)

  def f(x):
    return nn.with_logical_constraint(x * 2, ("batch", "length", "mlp"))

  x = np.ones((8, 4, 6), np.float32)
  with partitioning.activate(mesh):
    y = jax.jit(f)(x)
  assert y.sharding.spec == P(("data", "fsdp"), None, "tensor")
  # Outside the context the constraint is a no-op.
  assert jax.jit(f)(x).sharding.is_fully_replicated


def test_single_process_owns_every_row_and_builds_the_global_batch():
  mesh = _mesh(4, 2, 1)
  sharding = partitioning.batch_sharding(mesh)
  rows = multihost.process_rows(sharding, 16)
  np.testing.assert_array_equal(rows, np.arange(16))
  local = {"image": np.arange(16 * 2).reshape(16, 2).astype(np.uint8)}
  batch = multihost.global_batch(local, sharding, 16)
  assert batch["image"].shape == (16, 2)
  assert batch["image"].sharding == sharding
  np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])
  assert {s.data.shape for s in batch["image"].addressable_shards} == {(2, 2)}
