"""MSE alignment of paired embeddings, plus a small contrastive term.

MSE alone pulls pairs together but has a trivial minimum (every embedding the
same); the softmax term keeps non-matching pairs apart.

  python -m mmjax.train --config experiments/shapes_mse.py --workdir runs/mse
"""

from mmjax import configs


def get_config():
  config = configs.base()
  config.loss.name = "mse_alignment"
  config.loss.terms = {"softmax_contrastive": 0.5}
  config.model.temperature_init = 1 / 0.07
  config.model.bias_init = None
  # Zero-shot shape / colour / relation at the end (and in mmjax.evaluate).
  config.eval.evaluators.zeroshot.every = -1
  return config
