"""Audio towers: the window policy, the towers' shapes, and the model's feature stage."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data import audio as audio_features
from mmjax.models import audio, multi_tower

FEATURES = dict(fn="mmjax.data.audio.log_mel", sample_rate=8000, n_fft=256, hop_length=128,
                n_mels=16, center=False)
AST = dict(frames=12, patch=(4, 8), width=16, depth=1, num_heads=2)


def test_windows_repeat_a_short_clip_and_cover_a_long_one():
  spec = jnp.arange(5 * 2, dtype=jnp.float32).reshape(1, 5, 2)
  short = audio.windows(spec, 8)
  assert short.shape == (1, 1, 8, 2)
  np.testing.assert_array_equal(short[0, 0, :, 0], [0, 2, 4, 6, 8, 0, 2, 4])
  long = audio.windows(jnp.arange(10.0).reshape(1, 10, 1), 4)
  assert long.shape == (1, 3, 4, 1)
  # Consecutive windows; the last ends at the clip's end, overlapping the second.
  np.testing.assert_array_equal(long[0, :, :, 0], [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]])
  assert audio.windows(spec, 5).shape == (1, 1, 5, 2)


@pytest.fixture(scope="module")
def ast():
  model = audio.AudioSpectrogramTransformer(**AST)
  spec = jax.random.normal(jax.random.key(0), (3, 12, 16)) * 20 - 40
  return model, jax.jit(model.init)(jax.random.key(1), spec), spec


def test_ast_shapes(ast):
  model, variables, spec = ast
  pooled, seq = model.apply(variables, spec, return_sequence=True)
  assert pooled.shape == (3, 16) and seq.shape == (3, 3 * 2, 16)  # 3 x 2 patches


def test_a_long_clip_is_the_mean_of_its_windows(ast):
  model, variables, spec = ast
  other = spec[::-1] + 3.0
  long = jnp.concatenate([spec, other], axis=1)  # [3, 24, 16]: two whole windows
  pooled, seq = model.apply(variables, long, return_sequence=True)
  np.testing.assert_allclose(
      pooled, (model.apply(variables, spec) + model.apply(variables, other)) / 2, atol=1e-5)
  assert seq.shape == (3, 12, 16)
  # A short clip is its repetition.
  np.testing.assert_allclose(model.apply(variables, spec[:, :6]),
                             model.apply(variables, jnp.tile(spec[:, :6], (1, 2, 1))),
                             atol=1e-6)


def test_audio_cnn_shapes_and_windows():
  model = audio.AudioCNN(frames=8, widths=(4, 8), blocks_per_stage=1)
  spec = jax.random.normal(jax.random.key(0), (2, 8, 16))
  variables = jax.jit(model.init)(jax.random.key(1), spec)
  apply = jax.jit(model.apply, static_argnames="return_sequence")
  pooled, seq = apply(variables, spec, return_sequence=True)
  assert pooled.shape == (2, 8) and seq.shape == (2, 4 * 8, 8)
  twice = apply(variables, jnp.concatenate([spec, spec], axis=1))
  np.testing.assert_allclose(twice, pooled, atol=1e-5)


def test_towers_refuse_a_waveform_and_bad_patches():
  model = audio.AudioSpectrogramTransformer(**AST)
  with pytest.raises(ValueError, match="features entry"):
    model.init(jax.random.key(0), jnp.zeros((2, 8000)))
  with pytest.raises(ValueError, match="not divisible by patch"):
    model.init(jax.random.key(0), jnp.zeros((2, 12, 12)))


@pytest.fixture(scope="module")
def audio_text():
  towers = {"audio": dict(kind="ast", features=FEATURES, **AST),
            "text": dict(kind="transformer", width=16, depth=1, num_heads=2, vocab_size=32)}
  model = multi_tower.MultiTower(towers=towers, embed_dim=8)
  wave = jax.random.normal(jax.random.key(2), (3, 256 + 11 * 128)) * 0.1
  batch = {"audio": wave, "text": jnp.ones((3, 5), jnp.int32)}
  return model, model.init(jax.random.key(3), batch), batch


def test_the_feature_stage_runs_inside_the_model(audio_text):
  model, variables, batch = audio_text
  out = model.apply(variables, batch)
  assert out["z/audio"].shape == (3, 8)
  # The tower sees exactly log_mel(wave): equal to applying both by hand.
  spec = audio_features.log_mel(batch["audio"], **{k: v for k, v in FEATURES.items()
                                                  if k != "fn"})
  assert spec.shape == (3, 12, 16)
  params = nn.meta.unbox(variables["params"])
  tower = audio.AudioSpectrogramTransformer(**AST)
  by_hand = tower.apply({"params": params["audio_tower"]}, spec)
  z = by_hand @ params["audio_proj"]["kernel"]
  np.testing.assert_allclose(out["z/audio"], multi_tower.l2_normalize(z), atol=1e-5)
  np.testing.assert_allclose(model.apply(variables, batch["audio"], "audio",
                                         method=model.encode), out["z/audio"], atol=1e-6)


def test_a_feature_stage_must_name_an_importable_function():
  towers = {"audio": dict(kind="ast", features=dict(n_fft=256), **AST)}
  with pytest.raises(ValueError, match="needs fn="):
    multi_tower.MultiTower(towers=towers).init(jax.random.key(0), {"audio": jnp.zeros((1, 9))})
  towers["audio"]["features"] = dict(fn="mmjax.data.audio.no_such_feature")
  with pytest.raises(ValueError, match="no_such_feature"):
    multi_tower.MultiTower(towers=towers).init(jax.random.key(0), {"audio": jnp.zeros((1, 9))})
