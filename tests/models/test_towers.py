"""Encoders: shapes, padding invariance, causality, patching, logical axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from mmjax.models import cnn, multi_tower, text, vit

TEXT = dict(vocab_size=32, context_length=8, width=16, depth=1, num_heads=2)


def _init(module, *args):
  variables = module.init(jax.random.key(0), *args)
  return nn.meta.unbox(variables), variables


@pytest.mark.parametrize("pool", ["gap", "cls", "map"])
def test_vit_pools_give_one_vector_per_image(pool):
  model = vit.ViT(patch_size=4, width=16, depth=1, num_heads=2, pool=pool)
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
  params, _ = _init(model, x)
  out = model.apply(params, x)
  assert out.shape == (3, 16)
  # Each image is encoded independently of the others in the batch.
  np.testing.assert_allclose(model.apply(params, x[1:2])[0], out[1], rtol=1e-5, atol=1e-5)


def test_vit_flatten_pool_keeps_every_token_in_place():
  model = vit.ViT(patch_size=4, width=16, depth=1, num_heads=2, pool="flatten")
  x = jax.random.normal(jax.random.key(1), (3, 8, 12, 3))
  params, _ = _init(model, x)
  pooled, tokens = model.apply(params, x, return_sequence=True)
  assert pooled.shape == (3, 6 * 16) and tokens.shape == (3, 6, 16)
  # Token-major: the features of token t are pooled[:, 16 t : 16 (t + 1)], so
  # the projection after the tower knows where each patch was.
  np.testing.assert_array_equal(pooled.reshape(3, 6, 16), tokens)
  np.testing.assert_allclose(model.apply(params, x[1:2])[0], pooled[1], rtol=1e-5, atol=1e-5)


def test_vit_patch_embedding_equals_strided_convolution():
  model = vit.ViT(patch_size=4, width=8, depth=0, num_heads=2, pool="gap")
  x = jax.random.normal(jax.random.key(2), (2, 8, 12, 3))
  params, _ = _init(model, x)
  p = params["params"]
  kernel = p["embedding"]["kernel"].reshape(4, 4, 3, 8)  # (ph, pw, c) order
  conv = jax.lax.conv_general_dilated(x, kernel, (4, 4), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  tokens = conv.reshape(2, -1, 8) + p["embedding"]["bias"] + p["pos_embedding"]
  ln = p["encoder"]["ln_final"]
  mean, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
  expected = ((tokens - mean) / jnp.sqrt(var + 1e-6) * ln["scale"] + ln["bias"]).mean(1)
  np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stem,spills", [("patch", False), ("conv", True)])
def test_vit_conv_stem_sees_across_patch_borders(stem, spills):
  """A pixel of the bottom-right patch reaches the top-left token only through the
  overlapping 3x3 convolutions of the conv stem."""
  model = vit.ViT(patch_size=8, width=16, depth=0, num_heads=2, stem=stem)
  x = jnp.zeros((1, 16, 16, 3))
  params, _ = _init(model, x)

  def tokens(img):  # [4, 16]: the per-token output of the (depth 0) encoder
    _, state = model.apply(params, img, mutable=["intermediates"],
                           capture_intermediates=lambda m, _: m.name == "encoder")
    return state["intermediates"]["encoder"]["__call__"][0][0]

  diff = jnp.abs(tokens(x.at[0, 8, 8].set(1.0)) - tokens(x)).sum(-1)
  assert diff[3] > 1e-6  # its own patch, (1, 1)
  assert bool(diff[0] > 1e-6) == spills, diff


def test_vit_conv_stem_needs_power_of_two_patch():
  model = vit.ViT(patch_size=6, width=8, depth=1, num_heads=2, stem="conv")
  with pytest.raises(ValueError, match="power-of-two"):
    model.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))


def test_vit_rejects_image_not_divisible_by_patch():
  model = vit.ViT(patch_size=5, width=8, depth=1, num_heads=2)
  with pytest.raises(ValueError, match="patch_size"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("causal,pool", [(True, "eos"), (False, "first"), (False, "mean")])
def test_text_feature_ignores_padding(causal, pool):
  model = text.TextTransformer(causal=causal, pool=pool, **TEXT)
  tokens = np.array([[5, 6, 7, 2, 0, 0, 0, 0]], np.int32)
  params, _ = _init(model, tokens)
  out = model.apply(params, tokens)
  # Same caption, shorter padded length: the feature must not change.
  short = model.apply(params, tokens[:, :5])
  np.testing.assert_allclose(out, short, rtol=1e-5, atol=1e-5)
  # Garbage in padded positions is invisible when its id is the pad id; changing
  # a real token does change the feature.
  changed = tokens.copy()
  changed[0, 1] = 9
  assert np.abs(model.apply(params, changed) - out).max() > 1e-3


def test_causal_eos_pooling_sees_the_whole_caption_and_first_token_only_itself():
  tokens = np.array([[5, 6, 7, 2, 0, 0, 0, 0]], np.int32)
  changed = tokens.copy()
  changed[0, 2] = 11
  causal_first = text.TextTransformer(causal=True, pool="first", **TEXT)
  params, _ = _init(causal_first, tokens)
  # Under a causal mask the first token cannot see later tokens.
  np.testing.assert_allclose(causal_first.apply(params, tokens),
                             causal_first.apply(params, changed), rtol=1e-6, atol=1e-6)
  causal_eos = text.TextTransformer(causal=True, pool="eos", **TEXT)
  assert np.abs(causal_eos.apply(params, tokens) - causal_eos.apply(params, changed)).max() > 1e-3


def test_text_rejects_sequences_longer_than_context():
  model = text.TextTransformer(**TEXT)
  with pytest.raises(ValueError, match="context_length"):
    model.init(jax.random.key(0), jnp.ones((1, 9), jnp.int32))


def test_cnn_tower_downsamples_and_pools():
  model = cnn.ConvNet(widths=(8, 16), blocks_per_stage=1)
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  params, _ = _init(model, x)
  assert model.apply(params, x).shape == (2, 16)
  kernel = params["params"]["stage1_block0"]["Conv_0"]["kernel"]
  assert kernel.shape == (3, 3, 8, 16)


def _batch(images, tokens):
  return {"image": images, "text": tokens}


@pytest.fixture(scope="module")
def tiny_two_tower():
  model = multi_tower.MultiTower(
      towers=FrozenDict(
          image=FrozenDict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2),
          text=FrozenDict(kind="transformer", **TEXT)),
      embed_dim=8, temperature_init=10.0, bias_init=-10.0)
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  tokens = np.array([[5, 6, 2, 0, 0, 0, 0, 0]] * 3, np.int32)
  params, boxed = _init(model, _batch(images, tokens))
  return model, params, boxed, images, tokens


def test_two_tower_outputs_unit_norm_embeddings_and_initial_scale_bias(tiny_two_tower):
  model, params, _, images, tokens = tiny_two_tower
  out = model.apply(params, _batch(images, tokens))
  assert set(out) == {"z/image", "z/text", "scale", "bias"}
  assert out["z/image"].shape == out["z/text"].shape == (3, 8)
  assert out["z/image"].dtype == out["z/text"].dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(out["z/image"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(out["z/text"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["scale"], 10.0, rtol=1e-6)
  np.testing.assert_allclose(out["bias"], -10.0)
  # The encoders give the same embeddings as the full forward pass.
  np.testing.assert_allclose(model.apply(params, images, method=model.encode_image),
                             out["z/image"], atol=1e-6)
  np.testing.assert_allclose(model.apply(params, tokens, "text", method=model.encode),
                             out["z/text"], atol=1e-6)


def test_two_tower_uint8_images_are_normalised_like_float_images(tiny_two_tower):
  model, params, _, images, tokens = tiny_two_tower
  as_float = images.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(
      model.apply(params, images, method=model.encode_image),
      model.apply(params, jnp.asarray(as_float), method=model.encode_image), atol=1e-5)


def test_scale_is_clipped_at_max_temperature():
  model = multi_tower.MultiTower(
      towers=FrozenDict(image=FrozenDict(kind="cnn", widths=(8,), blocks_per_stage=1),
                        text=FrozenDict(kind="transformer", **TEXT)),
      embed_dim=8, temperature_init=50.0, max_temperature=20.0, bias_init=None)
  images, tokens = np.zeros((1, 8, 8, 3), np.uint8), np.ones((1, 8), np.int32)
  params, _ = _init(model, _batch(images, tokens))
  out = model.apply(params, _batch(images, tokens))
  np.testing.assert_allclose(out["scale"], 20.0, rtol=1e-6)
  assert "bias" not in params["params"] and float(out["bias"]) == 0.0


def test_every_parameter_carries_logical_axis_names(tiny_two_tower):
  _, params, boxed, _, _ = tiny_two_tower
  specs = nn.get_partition_spec(boxed)["params"]
  flat_params = jax.tree_util.tree_flatten_with_path(params["params"])[0]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(flat_specs) == len(flat_params)
  for (path, value), spec in zip(flat_params, flat_specs):
    assert isinstance(spec, jax.sharding.PartitionSpec), path
    assert len(spec) == value.ndim, (path, spec, value.shape)
  names = {n for s in flat_specs for n in s if n}
  assert {"embed", "mlp", "heads", "kv", "vocab", "joint"} <= names
