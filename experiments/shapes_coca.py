"""CoCa on the embedded shapes dataset: the SigLIP image-text model of the
default experiment plus a caption decoder reading the image tower's tokens,
trained jointly (contrastive 1.0, captioning 2.0, as open_clip's CoCa weighs
them).

At the end: retrieval (the contrastive part), zero-shot classification,
captions for the 1,000 test images by beam search, scored against their 5
references (BLEU, ROUGE-L, CIDEr-D) and written as COCO results JSON, and the
decoder's likelihood as a second way to rank captions and classify images.

  python -m mmjax.train --config experiments/shapes_coca.py --workdir runs/coca

Captioning alone (no contrastive term) for comparison:

  python -m mmjax.train --config experiments/shapes_coca.py --workdir runs/cap_only \\
      --config.loss.name=
"""

from mmjax import configs
from mmjax.losses import captioning


def get_config():
  config = configs.base()
  config.loss.name = "sigmoid_contrastive"
  config.model.temperature_init = 10.0
  config.model.bias_init = -10.0
  # The decoder cross-attends to the image tower's 16 patch tokens (32 px,
  # patches of 8); its logits cover the tokenizer's vocabulary.
  config.model.heads.caption = dict(kind="caption_decoder", width=256, depth=2, num_heads=4,
                                    source="image")
  config.loss.terms.caption = captioning.term("caption", weight=2.0)
  config.eval.evaluators.zeroshot.every = -1
  # tokenizer="ptb" and meteor=True score as the COCO server does (need Java).
  config.eval.evaluators.captioning = dict(kind="captioning", every=-1, method="beam",
                                           beam_size=3, tokenizer="simple", meteor=False)
  # Captions scored by the decoder's likelihood (as CapPa evaluates): retrieval
  # re-ranked among the embedding's top 10, and zero-shot from prompts.
  config.eval.evaluators.likelihood = dict(kind="caption_likelihood", every=-1)
  return config
