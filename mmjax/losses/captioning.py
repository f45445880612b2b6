"""Captioning loss: next-token cross-entropy of a decoder, padding ignored."""

import jax
import jax.numpy as jnp
import optax


def caption_cross_entropy(token_logits: jax.Array, targets: jax.Array,
                          weights: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy per real token of teacher-forced caption logits.

  Args:
    token_logits: [B, L, V] float, the decoder's logits for each position.
    targets: [B, L] int, the caption's ids (EOS included).
    weights: [B, L] float, 1 on real tokens, 0 on padding (not a target).
    label_smoothing: mass spread evenly over the vocabulary (0: none).

  Returns:
    float32 scalar: sum of weighted token losses / sum of weights (the mean
    over real tokens of the batch, so long captions count per token, as
    open_clip's CoCa and big_vision's CapPa average). 0 if no token is real.
  """
  logits = jnp.asarray(token_logits, jnp.float32)
  if logits.shape[:2] != targets.shape or targets.shape != weights.shape:
    raise ValueError(f"caption_cross_entropy: token_logits {logits.shape}, targets "
                     f"{targets.shape} and weights {weights.shape} must agree on [B, L].")
  if label_smoothing:
    labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, labels)
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  weights = jnp.asarray(weights, jnp.float32)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def term(head: str = "caption", weight: float = 1.0) -> dict:
  """The config entry of a captioning term reading decoder head `head`:

    config.loss.terms.caption = captioning.term("caption", weight=2.0)
  """
  return dict(fn="caption_cross_entropy", weight=weight,
              inputs=dict(token_logits=f"{head}/logits", targets=f"{head}/targets",
                          weights=f"{head}/weights"))
