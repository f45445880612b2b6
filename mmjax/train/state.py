"""Train state and optimizer: everything a step reads and writes, as one pytree."""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mmjax.train import warm_start


@flax.struct.dataclass
class TrainState:
  """step: [] int32, batches consumed; params and opt_state: pytrees of arrays;
  skipped: [] int32, steps whose update was dropped for a non-finite loss or
  gradient."""

  step: jax.Array
  params: Any
  opt_state: Any
  skipped: jax.Array


def schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to optim.lr, then cosine decay to lr * optim.min_lr_ratio."""
  warmup = min(optim_cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=optim_cfg.lr,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=optim_cfg.lr * optim_cfg.min_lr_ratio,
  )


def decay_mask(params) -> Any:
  """True for weight matrices and embeddings (ndim >= 2).

  Norm scales, biases (ndim 1) and the temperature and logit bias (scalars) are not
  decayed: shrinking them towards zero changes what the model computes rather than
  regularising it.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def optimizer(config, freeze_mask=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with warmup + cosine schedule, global-norm clipping and a decay mask.

  Params matching config.optim.freeze (regexes over '/'-joined paths, see
  `warm_start.frozen_mask`) get zero updates: no gradient step, no weight decay,
  and no Adam moments (optax.multi_transform hands AdamW only the trainable
  leaves). The clipping norm is over the trainable gradients only, so locking a
  tower (LiT) does not shrink the updates of the other by the frozen one's
  gradient norm. With nothing frozen the chain is the plain one, so the
  optimizer state keeps the structure existing checkpoints were saved with.

  freeze_mask: the pytree of bools `warm_start.frozen_mask` gives for the
  model's params (computed once by the caller, which hands the same mask to
  the train step); None computes it from the params the optimizer sees.
  """
  o = config.optim
  lr = schedule(o, config.total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(o.clip_norm) if o.clip_norm else optax.identity(),
      optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask),
  )
  freeze = tuple(o.get("freeze", ()))
  if freeze:
    label = lambda mask: jax.tree.map(lambda f: "frozen" if f else "trainable", mask)
    labels = (label(freeze_mask) if freeze_mask is not None
              else lambda params: label(warm_start.frozen_mask(params, freeze)))
    tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, lr


def init_params(model: nn.Module, rng: jax.Array, batch):
  """Initialises the model's params (plain arrays, logical-axis boxes removed).

  batch: {field: [B, ...]} (only shapes and dtypes matter).
  """
  return unbox(model.init(rng, batch))["params"]


def unbox(variables):
  """Strips the logical-axis boxes, without applying their sharding constraints.

  The layout of params is the caller's jit out_shardings (which replicate a
  dimension a mesh axis does not divide, where a constraint would fail).
  """
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x,
                      variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def create(params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    skipped=jnp.zeros((), jnp.int32))
