"""The train step: a pure function (state, batch) -> (state, metrics)."""

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from mmjax.train.state import TrainState

LossFn = Callable[[Mapping[str, jax.Array]], tuple[jax.Array, dict]]


def make_train_step(model, tx: optax.GradientTransformation, loss_fn: LossFn,
                    lr_schedule: optax.Schedule):
  """Returns train_step(state, batch) -> (state, metrics) for `jax.jit`.

  batch: {"image": [B, H, W, C] uint8, "text": [B, L] int32}.
  metrics: float32 scalars, "train/loss" and one "train/loss/<term>" per term.
  """

  def train_step(state: TrainState, batch):
    def loss_of(params):
      outputs = model.apply({"params": params}, batch["image"], batch["text"])
      total, terms = loss_fn(outputs)
      return total, (terms, outputs)

    (loss, (terms, outputs)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "train/loss": loss,
        "train/grad_norm": optax.tree.norm(grads),
        "train/lr": lr_schedule(state.step),
        "train/scale": outputs["scale"],
        "train/bias": outputs["bias"],
        **{f"train/loss/{name}": value for name, value in terms.items()},
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  return train_step
