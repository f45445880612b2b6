"""Fusion classifiers on frozen towers: a fusion_n head trained on the towers'
outputs to predict a class from several modalities at once (or from one, as
a baseline), with the machinery of the ITM heads (mmjax.train.matching).

Features (`matching.modality_features`) are computed once per distinct item
of each modality: {"z/<m>": [N_m, D], "tokens/<m>": [N_m, T, W], "mask/<m>":
[N_m, T]}. An example p sees item rows[m][p] of modality m, so items shared
by several examples are encoded once (the five captions of a test image share
its image's features); rows=None: example p is item p of every modality.

Training (`train_classifier`): Adam on the softmax cross-entropy of shuffled
minibatches (`matching.fit_minibatches`, the ITM heads' loop). Scoring
(`evaluate_classifier`): `pairs.multiclass_metrics` of the logits.
"""

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.eval.evaluators import batched
from mmjax.eval.pairs import multiclass_metrics
from mmjax.models.heads import fusion_n
from mmjax.train.matching import fit_minibatches

DEFAULT_LR = 1e-3


def reads_tokens(head: nn.Module) -> bool:
  """Whether the fusion_n head reads token sequences (not just embeddings)."""
  return isinstance(head, tuple(fusion_n.HEADS[k] for k in fusion_n.NEEDS_TOKENS))


def head_features(head: nn.Module, features: Mapping) -> dict:
  """The features `head` reads, on device (only those: a pooled head need
  not carry token sequences into every step)."""
  kinds = ("tokens", "mask") if reads_tokens(head) else ("z",)
  out = {}
  for m in head.modalities:
    if not any(k.endswith(f"/{m}") for k in features):
      raise ValueError(f"the fusion head reads modality {m!r}, but the features have "
                       f"{sorted(features)}; compute modality_features for {m!r} too.")
    if f"{kinds[0]}/{m}" not in features:
      raise ValueError(f"the {type(head).__name__} fusion head reads token sequences; "
                       "compute the features with modality_features(..., tokens=True).")
    # mask/<m> only for towers that pad: the head treats a missing one as all real.
    out.update({f"{k}/{m}": jnp.asarray(features[f"{k}/{m}"]) for k in kinds
                if f"{k}/{m}" in features})
  return out


def _rows(head: nn.Module, rows: Mapping | None, n: int) -> dict:
  # Built in NumPy and copied over: made with jnp, each would compile an op.
  if rows is None:
    return {m: jnp.asarray(np.arange(n, dtype=np.int32)) for m in head.modalities}
  return {m: jnp.asarray(np.asarray(rows[m], np.int32)) for m in head.modalities}


def gather(feats: Mapping, rows: Mapping, index) -> dict:
  """Per-example features: each "<kind>/<m>" array at rows[m][index]."""
  return {k: v[rows[k.split("/", 1)[1]][index]] for k, v in feats.items()}


def train_classifier(head: nn.Module, features: Mapping, labels, rows: Mapping | None = None,
                     *, steps: int = 1000, batch_size: int = 256, lr: float = DEFAULT_LR,
                     seed: int = 0):
  """Trains a fusion_n head on frozen features (see the module docstring).

  head: fusion_n.make_head(...); features: modality_features of the items;
  labels: [P] ints in [0, head.num_classes); rows: {m: [P] ints} or None.
  Returns the head's params.
  """
  labels = np.asarray(labels)
  feats, rows = head_features(head, features), _rows(head, rows, len(labels))

  def loss_fn(params, data, index):
    logits = head.apply({"params": params}, gather(data["feats"], data["rows"], index))
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, data["labels"][index]).mean()

  # Jitted, with the example row picked inside: run eagerly, init would
  # compile each of its ops on its own.
  init = jax.jit(lambda key, f, r: head.init(key, gather(f, r, np.zeros(1, np.int32))))(
      jax.random.key(seed), feats, rows)
  data = {"feats": feats, "rows": rows, "labels": jnp.asarray(labels.astype(np.int32))}
  return fit_minibatches(loss_fn, nn.meta.unbox(init)["params"], data, len(labels),
                         optax.adam(lr), steps=steps, batch_size=batch_size, seed=seed)


def classifier_logits(head: nn.Module, params, features: Mapping, num_examples: int,
                      rows: Mapping | None = None, *, batch_size: int = 512) -> np.ndarray:
  """Logits [P, K] float32 of the trained head on the P = num_examples examples."""
  feats, rows = head_features(head, features), _rows(head, rows, num_examples)
  # Features go in as arguments: closed over, they would be compiled in as constants.
  fn = jax.jit(lambda p, f, r, index: head.apply({"params": p}, gather(f, r, index)))
  return batched(lambda index: fn(params, feats, rows, index),
                 np.arange(num_examples, dtype=np.int32), batch_size)


def evaluate_classifier(head: nn.Module, params, features: Mapping, labels,
                        rows: Mapping | None = None) -> dict[str, float]:
  """multiclass_metrics (accuracy; macro precision, recall, F1, one-vs-rest
  ROC AUC) of the trained head on the examples' labels [P]."""
  logits = classifier_logits(head, params, features, len(labels), rows)
  return multiclass_metrics(logits, labels)
