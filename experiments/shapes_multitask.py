"""Multi-task training on the embedded shapes dataset, as ALBEF / BLIP train:
one image tower and one text tower shared by three tasks, each a loss term.

  contrastive  sigmoid loss over (image, text): retrieval and zero-shot
  matching     an ITM head (text tokens cross-attending to image tokens)
               classifies the batch's B true pairs against 2B in-batch hard
               negatives: for each image the most similar other caption and
               for each caption the most similar other image, picked from
               the image-text similarities of the batch (mmjax/models/heads/matching.py)
  captioning   a caption decoder over the image tokens (as experiments/shapes_coca.py)

Task weights are learned (config.loss.weighting = "uncertainty"): each term t
adds exp(-s_t) * L_t + s_t with its own log-variance s_t, logged as
train/log_var/<t>. For fixed weights: --config.loss.weighting=fixed.

  python -m mmjax.train --config experiments/shapes_multitask.py --workdir runs/multitask

At the end: retrieval, zero-shot, captioning scores, the ITM head scored on
mined hard test pairs, and captions scored by likelihood as a second
retrieval method.
"""

from mmjax import configs
from mmjax.losses import captioning


def get_config():
  config = configs.base()
  config.loss.name = "sigmoid_contrastive"
  config.model.temperature_init = 10.0
  config.model.bias_init = -10.0
  config.model.heads.itm = dict(kind="itm", fusion="cross_attention",
                                options=dict(width=128, depth=1, num_heads=4))
  config.loss.terms.itm = dict(fn="binary_cross_entropy", weight=1.0,
                               inputs=dict(logits="itm/logits", labels="itm/labels"))
  config.model.heads.caption = dict(kind="caption_decoder", width=256, depth=2, num_heads=4,
                                    source="image")
  config.loss.terms.caption = captioning.term("caption", weight=1.0)
  config.loss.weighting = "uncertainty"
  evaluators = config.eval.evaluators
  evaluators.zeroshot.every = -1
  evaluators.captioning = dict(kind="captioning", every=-1, method="beam", beam_size=3,
                               tokenizer="simple", meteor=False)
  evaluators.likelihood = dict(kind="caption_likelihood", every=-1)
  # The model's own ITM head, scored on hard test pairs mined by similarity.
  evaluators.itm = dict(kind="itm", every=-1, trained_head="itm")
  return config
