"""The train step: a pure function (state, batch, frozen_params) -> (state, metrics)."""

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.train.state import TrainState

# (outputs, batch) -> (total, {term id: value}); see mmjax.losses.combine.
LossFn = Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array]], tuple[jax.Array, dict]]
# (params, batch) -> {output name: array}: a frozen model run beside the one
# trained (a distillation teacher), its outputs joining the model's.
FrozenModel = Callable[[Any, Mapping[str, jax.Array]], dict]
# Scalar model outputs logged as train/<name>: the logit scales and biases
# (scale, bias, scale/<a>/<b>, ...) and learned task log-variances (log_var/<term>).
SCALAR_OUTPUTS = ("scale", "bias", "log_var")


def _microbatches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B / k, ...]; microbatch j holds rows j, j + k, j + 2k, ...

  Strided rather than contiguous: the batch is split over devices in contiguous
  blocks, so every device keeps its own rows in every microbatch and the split
  moves no data between devices (each device's block must divide by k).
  """
  b = x.shape[0]
  x = jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)
  return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))


def make_train_step(model, tx: optax.GradientTransformation, loss_fn: LossFn,
                    lr_schedule: optax.Schedule, grad_accum_steps: int = 1,
                    freeze_mask=None, frozen_models: Mapping[str, FrozenModel] | None = None,
                    seed: int = 0):
  """Returns train_step(state, batch, frozen_params) -> (state, metrics) for `jax.jit`.

  batch: {field: [B, ...]}, e.g. {"image": uint8 [B, H, W, C], "text": int32
  [B, L]}; the model reads its towers' input fields, the loss any field.
  frozen_params: {name: params} of `frozen_models` ({} without any).
  metrics: float32 scalars, "train/loss" and one "train/loss/<term>" per term,
  "train/skipped" (1 when the update was dropped for a non-finite loss or
  gradient), "train/grad_norm", "train/lr", "train/scale", "train/bias" (and
  "train/scale/<a>/<b>", "train/bias/<a>/<b>" for pairs with their own, and
  "train/log_var/<term>" for learned task weights).

  grad_accum_steps = k > 1 splits the batch into k microbatches of B / k rows
  and averages their losses and gradients in a `lax.scan` before one optimizer
  update, so activations are held for B / k rows at a time. For contrastive
  losses this is not the same objective as one batch of B: each example sees
  only the B / k - 1 negatives of its own microbatch (the standard trade-off of
  plain accumulation). Losses that are means over independent examples are
  unchanged. Accumulation lives inside the step, rather than as
  `optax.MultiSteps` over k calls, so one step still consumes the global batch
  of (seed, step), and state.step counts optimizer steps. The lr schedule
  counts applied updates: a step whose update was dropped (non-finite loss)
  does not advance it, so after k dropped steps the schedule is k behind
  state.step, and "train/lr" logs the rate actually applied.

  freeze_mask: None or a pytree like the params of bools, True for params the
  optimizer keeps fixed (config.optim.freeze). Their gradient is stopped in
  the forward pass, so XLA skips the backward pass through a locked tower
  (LiT) and "train/grad_norm" is the norm of the trainable gradients.

  frozen_models: {name: fn(params, batch) -> outputs}, e.g. a distillation
  teacher (mmjax/train/teacher.py): each runs on the same (micro)batch,
  outside the differentiated function and under stop_gradient, and its
  outputs join the model's. Their params are read only: no gradient, no
  optimizer state, not returned.

  seed: the model's "train" rng stream (heads that draw randomness while
  training, such as CapPa's masked examples) is keyed by (seed, step,
  microbatch), so a step's draws do not depend on the mesh or on a resume.
  """
  k = grad_accum_steps
  frozen_models = dict(frozen_models or {})

  def loss_and_grads(params, batch, frozen_params, rng):
    extra = {}
    for name, fn in frozen_models.items():
      extra.update(jax.lax.stop_gradient(fn(frozen_params[name], batch)))

    def loss_of(params):
      if freeze_mask is not None:
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p,
                              params, freeze_mask)
      outputs = {**model.apply({"params": params}, batch, rngs={"train": rng}), **extra}
      total, terms = loss_fn(outputs, batch)
      # The shared scale and bias, and any pair's own (scale/<a>/<b>, ...).
      scalars = {k: v for k, v in outputs.items()
                 if k.split("/")[0] in SCALAR_OUTPUTS and not jnp.ndim(v)}
      return total, {"terms": terms, "scalars": scalars}

    return jax.value_and_grad(loss_of, has_aux=True)(params)

  def accumulated(params, batch, frozen_params, rng):
    micro = jax.tree.map(lambda x: _microbatches(x, k), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(loss_and_grads, params, first, frozen_params, rng))

    def body(total, mb_and_index):
      mb, i = mb_and_index
      out = loss_and_grads(params, mb, frozen_params, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, total, out), None

    total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(k)))
    return jax.tree.map(lambda x: x / k, total)

  def train_step(state: TrainState, batch, frozen_params):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    (loss, aux), grads = (accumulated if k > 1 else loss_and_grads)(
        state.params, batch, frozen_params, rng)
    grad_norm = optax.tree.norm(grads)

    def update(params_and_opt):
      params, opt_state = params_and_opt
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    # A non-finite loss or gradient drops this update (params and optimizer
    # moments stay as they were) instead of poisoning the state; the loop
    # counts such steps and rolls back when they persist. A branch rather than
    # a select of old and new values: the update then runs in place over the
    # donated state, where a select kept the old moments alive (a copy of
    # every large moment buffer, ~7% of a small model's step on CPU).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.lax.cond(finite, update, lambda keep: keep,
                                     (state.params, state.opt_state))
    metrics = {
        "train/loss": loss,
        "train/skipped": 1 - finite.astype(jnp.float32),
        "train/grad_norm": grad_norm,
        # The schedule counts applied updates (optax's count does not advance on
        # a dropped one): this is the rate this step applied (or would have).
        "train/lr": lr_schedule(state.step - state.skipped),
        **{f"train/{name}": value for name, value in aux["scalars"].items()},
        **{f"train/loss/{name}": value for name, value in aux["terms"].items()},
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              skipped=state.skipped + 1 - finite.astype(jnp.int32))
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  return train_step
