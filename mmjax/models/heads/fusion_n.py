"""Fusion heads over any set of modalities, for classification.

Each head reads the towers' outputs for B examples, each seen through every
modality of `modalities`, and returns class logits [B, K]. `feats` holds, for
each modality m (MultiTower's output names):

  z/<m>       [B, D]     unit-norm embedding
  tokens/<m>  [B, T, W]  token sequence before pooling   } cross_attention only
  mask/<m>    [B, T]     bool, True on real tokens       } (absent: all real)

The three heads are three answers to "where do the modalities meet", as the
pairwise matching heads of `fusion` are:

  concat_mlp        after pooling, in one MLP over all embeddings
  weighted_sum      after each modality's own decision: a learned mixture
                    (convex weights) of per-modality classifiers' predictions
  cross_attention   before pooling: learned queries attend over every
                    modality's tokens at once

With one modality each head is that modality's baseline: concat_mlp (or
weighted_sum) an MLP probe on its embedding, cross_attention attention
pooling over its tokens.
"""

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import layers
from mmjax.models.heads import fusion
from mmjax.models.layers import logical

WEIGHTS = "modality_logits"  # WeightedSum's param: softmax over it = the modality weights


class MLP(nn.Module):
  """GELU MLP from embeddings to class logits.

  Unit-norm inputs are rescaled by sqrt(D) first, so their coordinates have
  unit scale, the scale the Dense initialiser assumes: at 1/sqrt(D) a
  probe's first steps would move the logits D times more slowly.

  xs: list of [B, D_i] unit-norm embeddings (concatenated) -> [B, K] float32
  """

  num_classes: int
  hidden: int = 256
  depth: int = 1
  dtype: str = "float32"

  @nn.compact
  def __call__(self, xs):
    x = jnp.concatenate([v * np.sqrt(v.shape[-1]) for v in xs], axis=-1).astype(self.dtype)
    for i in range(self.depth):
      x = nn.gelu(fusion.dense(self.hidden, "joint" if i == 0 else None, "mlp", f"fc{i}",
                               self.dtype)(x), approximate=True)
    return fusion.dense(self.num_classes, "mlp" if self.depth else "joint", None, "out",
                        self.dtype)(x).astype(jnp.float32)


def _z(feats: Mapping, modality: str):
  key = f"z/{modality}"
  if key not in feats:
    raise KeyError(f"the fusion head reads {key!r}, which its features lack (they have "
                   f"{sorted(feats)}); compute features for every modality of the head.")
  return feats[key]


class ConcatMLP(nn.Module):
  """One MLP over the concatenated embeddings of all modalities (early fusion
  after pooling): it can combine evidence across modalities in any way.

  feats: {"z/<m>": [B, D] for m in modalities} -> logits [B, K] float32
  """

  modalities: Sequence[str]
  num_classes: int
  hidden: int = 256
  depth: int = 1
  dtype: str = "float32"

  @nn.compact
  def __call__(self, feats):
    xs = [_z(feats, m) for m in self.modalities]
    return MLP(self.num_classes, self.hidden, self.depth, self.dtype, name="mlp")(xs)


class WeightedSum(nn.Module):
  """Late fusion: a learned weighted sum of per-modality predictions,
  p(y) = sum_m w_m softmax(MLP_m(z_m)), w = softmax(a).

  Each modality has its own classifier (the concat_mlp probe on that modality
  alone) and one learned logit a_m; the head outputs log p, a mixture of the
  classifiers' distributions (a linear opinion pool). The sum is over
  probabilities, not over the classifiers' logits, so that the weights mean
  something: summed logits are a product of experts, in which a classifier
  that knows nothing learns flat logits and then leaves the loss the same
  whatever its weight (on the shapes colour task a colourless sketch kept a
  third of it), and any weight can be traded against the scale of its logits.
  In the mixture a classifier at chance dilutes every prediction, so its
  weight goes to ~0 (the sketch's: 0.004), and w_m is the share of the vote
  modality m earns. The price: a mixture is never surer than its surest
  member, so it does not add up weak evidence from several modalities; that
  is concat_mlp's and cross_attention's to do.

  Attributes:
    weight_scale: w = softmax(weight_scale * a). Adam moves a by about lr per
      step; at lr 1e-3 and scale 1 the weights could barely leave uniform in
      a thousand steps, at 10 they can reach one-hot in a few hundred, as fast
      as the classifiers learn.

  feats: {"z/<m>": [B, D] for m in modalities} -> logits [B, K] float32, the
  mixture's log-probabilities. The weights [M] are sown as intermediates
  "weights" (and modality_weights reads them from the params).
  """

  modalities: Sequence[str]
  num_classes: int
  hidden: int = 256
  depth: int = 1
  weight_scale: float = 10.0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, feats):
    a = self.param(WEIGHTS, logical(nn.initializers.zeros, None), (len(self.modalities),))
    log_w = jax.nn.log_softmax(self.weight_scale * a.astype(jnp.float32))
    self.sow("intermediates", "weights", jnp.exp(log_w))
    log_p = jnp.stack([jax.nn.log_softmax(MLP(
        self.num_classes, self.hidden, self.depth, self.dtype, name=f"{m}_mlp")([_z(feats, m)]))
                       for m in self.modalities])  # [M, B, K]
    return jax.nn.logsumexp(log_p + log_w[:, None, None], axis=0)


class CrossAttention(nn.Module):
  """Fusion before pooling: learned queries attend over all modalities' tokens.

  Each modality's tokens are projected to `width`; the sequences are
  concatenated, layer-normed (towers of different widths and scales meet on
  equal terms) and tagged with a learned type embedding per modality;
  padding is masked (mask/<m>), and `num_queries` learned query tokens go
  through `depth` fusion.CrossAttentionBlocks over them. The queries are
  flattened into one vector and a linear layer gives the logits: several
  queries can each gather something else (one modality, one object).

  Attributes:
    width: model width (every modality is projected to it).
    depth: number of cross-attention blocks.
    num_heads: attention heads (must divide width).
    mlp_dim: hidden size of each block's comparison MLP (default 2x width).
    num_queries: learned query tokens.

  feats: {"tokens/<m>": [B, T_m, W_m], optional "mask/<m>": [B, T_m] bool}
  -> logits [B, K] float32
  """

  modalities: Sequence[str]
  num_classes: int
  width: int = 128
  depth: int = 1
  num_heads: int = 4
  mlp_dim: int | None = None
  num_queries: int = 4
  dtype: str = "float32"

  @nn.compact
  def __call__(self, feats):
    seqs, kinds, masks = [], [], []
    for m in self.modalities:
      if f"tokens/{m}" not in feats:
        raise KeyError(f"the cross_attention fusion head reads 'tokens/{m}', which its "
                       f"features lack (they have {sorted(feats)}); compute them with "
                       "tokens=True.")
      t = feats[f"tokens/{m}"]
      seqs.append(fusion.dense(self.width, None, "embed", f"{m}_in", self.dtype)(
          t.astype(self.dtype)))
      kind = self.param(f"{m}_type", logical(nn.initializers.normal(0.02), "embed"),
                        (self.width,))
      kinds.append(jnp.broadcast_to(kind.astype(self.dtype), seqs[-1].shape))
      masks.append(feats.get(f"mask/{m}", jnp.ones(t.shape[:2], bool)))
    # LayerNorm acts on each token alone, so one LN (after the per-modality
    # projections, before the type embeddings) puts every tower on one scale.
    context = layers.LayerNorm(dtype=self.dtype, name="context_ln")(
        jnp.concatenate(seqs, axis=1)) + jnp.concatenate(kinds, axis=1)
    mask = jnp.concatenate(masks, axis=1)
    queries = self.param("queries", logical(nn.initializers.normal(0.02), None, "embed"),
                         (self.num_queries, self.width))
    x = jnp.broadcast_to(queries.astype(self.dtype), (len(mask), *queries.shape))
    for i in range(self.depth):
      x = fusion.CrossAttentionBlock(self.num_heads, self.mlp_dim or 2 * self.width,
                                     dtype=self.dtype, name=f"block{i}")(x, context, mask)
    x = layers.LayerNorm(dtype=self.dtype, name="ln_final")(x)
    x = x.reshape(len(x), -1)
    return fusion.dense(self.num_classes, None, None, "out", self.dtype)(x).astype(jnp.float32)


HEADS = {"concat_mlp": ConcatMLP, "weighted_sum": WeightedSum,
         "cross_attention": CrossAttention}
# Heads that read token sequences, not just the pooled embeddings.
NEEDS_TOKENS = ("cross_attention",)


def make_head(kind: str, modalities: Sequence[str], num_classes: int,
              dtype: str | None = None, **cfg) -> nn.Module:
  """Fusion head `kind` (one of HEADS) over `modalities`, with K = num_classes
  outputs and attributes `cfg` (and `dtype`, where given)."""
  if kind not in HEADS:
    raise ValueError(f"unknown fusion head {kind!r}; choose one of {tuple(HEADS)}.")
  modalities = tuple(modalities)
  if not modalities or len(set(modalities)) != len(modalities):
    raise ValueError(f"a fusion head needs one or more distinct modalities, got "
                     f"{modalities}; list each modality once.")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes={num_classes!r}: a classifier needs 2 or more classes.")
  if dtype is not None:
    cfg["dtype"] = dtype
  return HEADS[kind](modalities=modalities, num_classes=num_classes, **cfg)


def modality_weights(head: WeightedSum, params: Mapping) -> dict[str, float]:
  """{modality: weight} of a trained weighted_sum head (they sum to 1).

  params: the head's params (without the {"params": ...} wrapper).
  """
  a = head.weight_scale * np.asarray(params[WEIGHTS], np.float64)
  weights = np.exp(a - a.max())  # the module's softmax, in NumPy: no op to compile
  return dict(zip(head.modalities, (weights / weights.sum()).tolist()))
