"""CoCa on COCO (Karpathy splits): the SigLIP ViT-B/16 + text-B recipe of
experiments/coco_siglip.py plus a caption decoder, trained jointly and
evaluated on the 5k-image test split for retrieval and captioning.

  python -m mmjax.data.prepare coco_karpathy --source dataset_coco.json \\
      --images /data/coco --data-dir /data/tfds --name coco_karpathy
  python -m mmjax.train --config experiments/coco_coca.py \\
      --config.data.data_dir=/data/tfds --workdir gs://BUCKET/runs/coco_coca
  python -m mmjax.evaluate --config experiments/coco_coca.py \\
      --config.data.data_dir=/data/tfds --workdir gs://BUCKET/runs/coco_coca \\
      --export-captions captions_test.json

Decoder as open_clip's CoCa: 256 queries of an attentional pooler over the
image tokens, a 768-wide transformer of 6 blocks (CoCa-Base gives its
multimodal half 6 of its 12 text layers), caption loss weighted 2.0 against
1.0 for the contrastive term. It is a separate decoder rather than the upper
half of the text tower: the text tower here is bidirectional (SigLIP), which
a decoder cannot be. Captions are scored with the PTB tokenizer and METEOR,
as the COCO server does (both need Java); beam search of 3 with GNMT length
penalty 0.6 and at most 30 tokens, and no fewer than 5.
"""

from mmjax import experiment_files
from mmjax.losses import captioning


def get_config():
  config = experiment_files.config("coco_siglip")
  config.model.heads.caption = dict(kind="caption_decoder", width=768, depth=6,
                                    num_heads=12, num_queries=256, source="image")
  config.loss.terms.caption = captioning.term("caption", weight=2.0)
  config.eval.evaluators.captioning = dict(
      kind="captioning", every=-1, method="beam", beam_size=3, alpha=0.6, max_length=30,
      min_length=5, tokenizer="ptb", meteor=True)
  return config
