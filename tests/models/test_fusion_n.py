"""The N-modality fusion heads (mmjax/models/heads/fusion_n.py): the pooled
heads' structure and the weighted sum's weights. The heads trained, and the
cross-attention head's padding mask, are tested in tests/train/test_fusion.py
(training compiles each head once; here it would compile again)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.models.heads import fusion_n

MODALITIES = ("image", "text", "audio")
SMALL = {"concat_mlp": dict(hidden=16), "weighted_sum": dict(hidden=16)}
B, K = 5, 3


def features(seed=0):
  """Unit-norm embeddings of three modalities, of different sizes."""
  rng = np.random.default_rng(seed)
  feats = {}
  for m, d in zip(MODALITIES, (8, 6, 4)):
    z = rng.normal(size=(B, d)).astype(np.float32)
    feats[f"z/{m}"] = z / np.linalg.norm(z, axis=-1, keepdims=True)
  return feats


def random_params(head, seed=0):
  """Params of `head`, drawn in NumPy: eval_shape traces init without compiling it."""
  shapes = nn.meta.unbox(jax.eval_shape(head.init, jax.random.key(0), features()))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def _mlp(params, z):
  return fusion_n.MLP(K, hidden=16).apply({"params": params}, [z])


def test_weighted_sum_is_a_mixture_of_per_modality_probes():
  head = fusion_n.make_head("weighted_sum", MODALITIES, K, **SMALL["weighted_sum"])
  params = random_params(head)
  params[fusion_n.WEIGHTS] = np.array([0.3, -0.1, 0.05], np.float32)
  weights = fusion_n.modality_weights(head, params)
  assert list(weights) == list(MODALITIES)
  assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
  assert all(w > 0 for w in weights.values()) and weights["image"] > weights["audio"]
  assert fusion_n.modality_weights(head, {fusion_n.WEIGHTS: np.zeros(3)}) == {
      m: pytest.approx(1 / 3) for m in MODALITIES}
  # Each modality's classifier is the concat_mlp head over that modality alone.
  probe = fusion_n.make_head("concat_mlp", ("text",), K, **SMALL["concat_mlp"])
  run = jax.jit(lambda p, f: (
      head.apply({"params": p}, f, mutable=["intermediates"]),
      [_mlp(p[f"{m}_mlp"], f[f"z/{m}"]) for m in MODALITIES],
      probe.apply({"params": {"mlp": p["text_mlp"]}}, f)))
  (logits, state), parts, text_probe = run(params, features())
  assert logits.shape == text_probe.shape == (B, K) and logits.dtype == np.float32
  # The weights are those the head sows, and its distribution is the weighted
  # sum of the modalities' own.
  np.testing.assert_allclose(state["intermediates"]["weights"][0], list(weights.values()),
                             rtol=1e-6)
  probs = [np.exp(p) / np.exp(p).sum(-1, keepdims=True) for p in map(np.asarray, parts)]
  np.testing.assert_allclose(np.exp(logits), sum(w * p for w, p in zip(weights.values(), probs)),
                             atol=1e-6)
  np.testing.assert_allclose(parts[1], text_probe, atol=1e-6)


def test_make_head_errors_say_what_to_change():
  with pytest.raises(ValueError, match="unknown fusion head 'bilinear'.*concat_mlp"):
    fusion_n.make_head("bilinear", MODALITIES, K)
  with pytest.raises(ValueError, match="distinct modalities.*list each modality once"):
    fusion_n.make_head("concat_mlp", ("image", "image"), K)
  with pytest.raises(ValueError, match="distinct modalities"):
    fusion_n.make_head("concat_mlp", (), K)
  with pytest.raises(ValueError, match="num_classes=1: a classifier needs 2 or more"):
    fusion_n.make_head("concat_mlp", MODALITIES, 1)
  head = fusion_n.make_head("concat_mlp", ("image", "depth"), K)
  with pytest.raises(KeyError, match="reads 'z/depth'.*compute features for every modality"):
    jax.eval_shape(head.init, jax.random.key(0), features())
