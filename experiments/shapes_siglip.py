"""SigLIP (sigmoid loss) on the embedded shapes dataset: the default experiment.

  python -m mmjax.train --config experiments/shapes_siglip.py --workdir runs/siglip
"""

from mmjax import configs


def get_config():
  config = configs.base()
  config.loss.name = "sigmoid_contrastive"
  config.model.temperature_init = 10.0   # SigLIP: t' = log 10, b = -10
  config.model.bias_init = -10.0
  # Zero-shot shape / colour / relation at the end (and in mmjax.evaluate).
  config.eval.evaluators.zeroshot.every = -1
  return config
