"""Three modalities on the shapes data: the image, its caption, and a sketch.

The sketch is a second view of the same scene (mmjax/data/shapes_views.py):
the luminance edges of the image, colour removed. A third tower reads it
(`input="sketch"`), and pairwise sigmoid terms align every pair, each with a
logit scale and bias of its own. Retrieval is reported for every pair.

  python -m mmjax.train --config experiments/shapes_three_views.py --workdir runs/three

Colour is gone from the sketch, so sketch -> text can only tell scenes apart
by shape, size and layout: its recall is bounded well below image -> text's,
while image <-> sketch is a view-matching task that needs no words at all.
"""

from mmjax import configs

PAIRS = (("image", "text"), ("sketch", "text"), ("image", "sketch"))


def get_config():
  config = configs.base()
  config.data.fields = ("sketch",)
  config.model.towers.sketch = dict(kind="vit", input="sketch", patch_size=8, width=128,
                                    depth=2, num_heads=4, pool="gap", stem="conv")
  config.model.pair_scales = PAIRS
  config.loss.name = "sigmoid_contrastive"   # over loss.pair = (image, text)
  config.loss.terms.sketch_text = dict(fn="sigmoid_contrastive", pair=("sketch", "text"))
  config.loss.terms.image_sketch = dict(fn="sigmoid_contrastive", pair=("image", "sketch"))
  config.model.temperature_init = 10.0
  config.model.bias_init = -10.0
  for a, b in PAIRS[1:]:
    config.eval.evaluators[f"retrieval_{a}_{b}"] = dict(kind="retrieval", every=0,
                                                        pair=(a, b))
  return config
