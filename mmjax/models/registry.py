"""Registries of tower, head and model kinds.

`config.model.towers.<modality>.kind`, `config.model.heads.<name>.kind` and
`config.model.name` name an entry here or give a dotted path to any flax
Module, so a fork adds its own without touching mmjax:

  config.model.towers.sketch = dict(kind="myfork.towers.SketchNet", width=64)

or registers it once, from its own module, under a short name:

  mmjax.models.registry.TOWERS["sketch_net"] = SketchNet
"""

from mmjax import registry
from mmjax.models import audio, bert, cnn, text, vit
from mmjax.models.heads import captioning, matching

# A tower maps one input field to features: __call__(x) -> [B, W] and
# __call__(x, return_sequence=True) -> ([B, W], [B, T, W]).
TOWERS = {
    "vit": vit.ViT,
    "cnn": cnn.ConvNet,
    "transformer": text.TextTransformer,
    "bert": bert.BertEncoder,
    "ast": audio.AudioSpectrogramTransformer,
    "audio_cnn": audio.AudioCNN,
}

# A head reads the towers' outputs (embeddings, token sequences) and returns
# named outputs, which the model namespaces under "<head name>/".
HEADS = {
    "itm": matching.MatchingHead,
    "caption_decoder": captioning.CaptionDecoder,
}


def tower_class(kind, modality: str):
  """The Module class of tower `kind` (a name in TOWERS or a dotted path)."""
  return registry.resolve(kind, TOWERS, f"tower kind (config.model.towers.{modality}.kind)")


def head_class(kind, name: str):
  """The Module class of head `kind` (a name in HEADS or a dotted path)."""
  return registry.resolve(kind, HEADS, f"head kind (config.model.heads.{name}.kind)")


def model_class(name):
  """The model class of config.model.name: "multi_tower" or a dotted path."""
  from mmjax.models import multi_tower  # pylint: disable=g-import-not-at-top
  return registry.resolve(name, {"multi_tower": multi_tower.MultiTower},
                          "model (config.model.name)")
