"""CLIP (softmax contrastive loss) on the embedded shapes dataset.

  python -m mmjax.train --config experiments/shapes_clip.py --workdir runs/clip
"""

from mmjax import configs


def get_config():
  config = configs.base()
  config.loss.name = "softmax_contrastive"
  config.model.temperature_init = 1 / 0.07   # CLIP's initial logit scale
  config.model.bias_init = None               # the softmax loss is shift-invariant
  # Zero-shot shape / colour / relation at the end (and in mmjax.evaluate).
  config.eval.evaluators.zeroshot.every = -1
  return config
