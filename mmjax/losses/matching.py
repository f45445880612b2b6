"""Binary matching loss: is this pair a match? (image-text matching heads)."""

import jax
import jax.numpy as jnp
import optax


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean sigmoid binary cross-entropy of match logits.

  Args:
    logits: [N] float, > 0 means "match" (e.g. a matching head's `itm/logits`).
    labels: [N] float in {0, 1} (or soft targets in [0, 1]).

  Returns:
    float32 scalar: mean over pairs of -(y log s(x) + (1 - y) log(1 - s(x))).
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  if logits.shape != labels.shape:
    raise ValueError(f"binary_cross_entropy: logits {logits.shape} and labels "
                     f"{labels.shape} must have one shape.")
  return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
