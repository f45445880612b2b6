"""SigLIP ViT-B/16 + text-B on COCO (Karpathy splits): train, evaluate 5k-image test retrieval.

  python -m mmjax.data.prepare coco_karpathy --source dataset_coco.json \
      --images /data/coco --data-dir /data/tfds --name coco_karpathy
  python -m mmjax.train --config experiments/coco_siglip.py \
      --config.data.data_dir=/data/tfds --workdir gs://BUCKET/runs/coco_siglip

From scratch on COCO's 113k train images (train + restval), 565k captions.
Settings follow the SigLIP paper's B/16 recipe scaled to a small dataset:
224 px, MAP head, bidirectional text tower pooled at the first token, 64
tokens, global batch 4,096 (the sigmoid loss does well at small batches),
AdamW (b2 0.95), 1e-3 peak learning rate with 10% warmup and cosine decay,
weight decay 1e-4, bfloat16 compute, activation rematerialisation. About 36
epochs over the images. Sized for a TPU v5e-64 or 8 H100s; on fewer devices
raise --config.optim.grad_accum_steps.
"""

from mmjax import configs


def get_config():
  config = configs.vit_b16_on_prepared_data("coco_karpathy")
  config.data.context_length = 64
  config.data.vocab_size = 32000
  config.model.towers.text = dict(kind="transformer", width=768, depth=12, num_heads=12,
                                  causal=False, pool="first")
  config.model.embed_dim = 768
  config.loss.name = "sigmoid_contrastive"
  config.model.temperature_init = 10.0   # SigLIP: t' = log 10, b = -10
  config.model.bias_init = -10.0
  config.batch_size = 4096
  config.optim.lr = 1e-3
  config.optim.weight_decay = 1e-4
  config.eval.batch_size = 1000   # Karpathy test: 5,000 images x 5 captions
  return config
