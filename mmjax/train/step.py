"""The train step: a pure function (state, batch) -> (state, metrics)."""

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.losses import contrastive
from mmjax.train.state import TrainState

LossFn = Callable[[Mapping[str, jax.Array]], tuple[jax.Array, dict]]
# (teacher_params, batch) -> {"teacher_zimg", "teacher_ztxt", "teacher_logits"}
TeacherFn = Callable[[Any, Mapping[str, jax.Array]], dict]


def distill_logits(zimg: jax.Array, ztxt: jax.Array, temperature: float) -> jax.Array:
  """zimg [B, D], ztxt [B', D] unit norm -> [B, B'] float32 `zimg @ ztxt.T / T`.

  The similarity matrices kl_alignment compares, student's and teacher's alike:
  one fixed temperature rather than each model's learned scale, so the KL
  term matches the two models' similarity structure and cannot be lowered by
  moving the student's scale (which the contrastive loss tunes for itself;
  under the sigmoid loss it is not a softmax temperature at all).
  """
  return contrastive.pairwise_logits(zimg, ztxt, 1.0 / temperature)


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
                    frozen=None, teacher_outputs: TeacherFn | None = None,
                    distill_temperature: float | None = None):
  """Returns train_step(state, batch) -> (state, metrics) for `jax.jit`.

  batch: {"image": [B, H, W, C] uint8, "text": [B, L] int32}.
  metrics: float32 scalars, "train/loss" and one "train/loss/<term>" per term,
  "train/skipped" (1 when the update was dropped for a non-finite loss or
  gradient), "train/grad_norm", "train/lr", "train/scale", "train/bias".

  grad_accum_steps = k > 1 splits the batch into k microbatches of B / k rows
  and averages their losses and gradients in a `lax.scan` before one optimizer
  update, so activations are held for B / k rows at a time. For contrastive
  losses this is not the same objective as one batch of B: each example sees
  only the B / k - 1 negatives of its own microbatch (the standard trade-off of
  plain accumulation; the loss value is correspondingly lower). Losses that are
  means over independent examples are unchanged.

  frozen: None or a pytree like the params of bools, True for params the
  optimizer keeps fixed (config.optim.freeze). Their gradient is stopped in
  the forward pass, so XLA skips the backward pass through a locked tower
  (LiT) and "train/grad_norm" is the norm of the trainable gradients.

  teacher_outputs: None, or `teacher_outputs(teacher_params, batch)` (see
  mmjax/train/teacher.py). The step is then train_step(state, batch,
  teacher_params): the teacher runs on the same (micro)batch, outside the
  differentiated function and under stop_gradient, its outputs join the
  model's, and `logits` becomes the student's `distill_logits` at
  `distill_temperature`, the matrix kl_alignment compares with teacher_logits.
  teacher_params are read only: no gradient, no optimizer state, not returned.

  Accumulation lives inside the step, rather than as `optax.MultiSteps` over k
  calls, so one step still consumes the global batch of (seed, step), state.step
  and the lr schedule count optimizer updates, and a k > 1 run logs, evaluates,
  checkpoints and resumes at the same steps as a k = 1 run.
  """
  k = grad_accum_steps
  if teacher_outputs is not None and not distill_temperature:
    raise ValueError("a teacher needs distill_temperature > 0 (config.distill.temperature).")

  def loss_and_grads(params, batch, teacher_params):
    extra = {}
    if teacher_outputs is not None:
      extra = jax.lax.stop_gradient(teacher_outputs(teacher_params, batch))

    def loss_of(params):
      if frozen is not None:
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p,
                              params, frozen)
      outputs = model.apply({"params": params}, batch["image"], batch["text"])
      if teacher_outputs is not None:
        outputs = {**outputs, **extra, "logits": distill_logits(
            outputs["zimg"], outputs["ztxt"], distill_temperature)}
      total, terms = loss_fn(outputs)
      return total, {"terms": terms, "scale": outputs["scale"], "bias": outputs["bias"]}

    return jax.value_and_grad(loss_of, has_aux=True)(params)

  def accumulated(params, batch, teacher_params):
    micro = jax.tree.map(lambda x: _microbatches(x, k), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(loss_and_grads, params, first, teacher_params))

    def body(total, mb):
      return jax.tree.map(jnp.add, total, loss_and_grads(params, mb, teacher_params)), None

    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda x: x / k, total)

  def step(state: TrainState, batch, teacher_params=None):
    (loss, aux), grads = (accumulated if k > 1 else loss_and_grads)(
        state.params, batch, teacher_params)
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
        "train/lr": lr_schedule(state.step),
        "train/scale": aux["scale"],
        "train/bias": aux["bias"],
        **{f"train/loss/{name}": value for name, value in aux["terms"].items()},
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              skipped=state.skipped + 1 - finite.astype(jnp.int32))
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  if teacher_outputs is None:
    def train_step(state: TrainState, batch):
      return step(state, batch)
  else:
    def train_step(state: TrainState, batch, teacher_params):
      return step(state, batch, teacher_params)
  return train_step
