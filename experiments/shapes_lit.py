"""LiT on shapes: a locked, pretrained image tower; the text tower learns to match it.

First train both towers (SigLIP), then start a new run whose image tower and
image projection are copied from that run and frozen, with a fresh text tower
trained against the fixed image embeddings (Zhai et al., 2022, "LiT: Zero-Shot
Transfer with Locked-image text Tuning"; with the sigmoid loss, as SigLiT):

  python -m mmjax.train --config experiments/shapes_siglip.py --workdir runs/siglip
  python -m mmjax.train --config experiments/shapes_lit.py --workdir runs/lit \
      --config.init.checkpoint=runs/siglip

init.checkpoint is required: the run stops before its first step, naming the
key, if it is not given (--config.init.checkpoint='' trains from scratch with
the image tower frozen at its random init, a useful floor to compare against).
The model is shapes_siglip's (read from that file), so the image tower is
the source run's as long as both are run from the same code.
"""

import ml_collections

from mmjax import experiment_files

# The image tower and its projection into the shared space; the text tower,
# its projection, the temperature and the bias start fresh and train.
IMAGE = ("image_tower/.*", "image_proj/.*")


def get_config():
  # shapes_siglip's model, loss, optimizer and zero-shot evaluation.
  config = experiment_files.config("shapes_siglip")
  # A placeholder rather than "": a value must be given on the command line.
  config.init.checkpoint = ml_collections.config_dict.placeholder(str)
  config.init.include = IMAGE
  config.optim.freeze = IMAGE
  return config
