"""CLIP (softmax) ViT-B/16 + text-B on Flickr30k (Karpathy splits): 1k-image test retrieval.

  python -m mmjax.data.prepare coco_karpathy --source dataset_flickr30k.json \
      --images /data/flickr30k/images --data-dir /data/tfds --name flickr30k
  python -m mmjax.train --config experiments/flickr30k_clip.py \
      --config.data.data_dir=/data/tfds --workdir runs/flickr30k_clip

Flickr30k's Karpathy JSON has the same layout as COCO's (29k train images,
145k captions; 1,000 test images x 5). CLIP's recipe at ViT-B/16: 224 px,
causal text tower pooled at EOS, 77 tokens, learned temperature from 1/0.07,
AdamW (b2 0.98), 5e-4 peak with warmup and cosine decay, weight decay 0.2,
global batch 1,024 (the gather form of the softmax loss scores all 1,024
texts on every device). About 35 epochs; from scratch on this little data
expect far lower recall than a pretrained CLIP.
"""

from mmjax import configs


def get_config():
  config = configs.vit_b16_on_prepared_data("flickr30k")
  config.model.towers.image.pool = "cls"    # CLIP pools the class token
  config.data.context_length = 77
  config.data.vocab_size = 16000
  config.model.towers.text = dict(kind="transformer", width=512, depth=12, num_heads=8,
                                  causal=True, pool="eos")
  config.model.embed_dim = 512
  config.loss.name = "softmax_contrastive"
  config.model.temperature_init = 1 / 0.07
  config.model.bias_init = None      # the softmax loss is shift-invariant
  config.batch_size = 1024
  config.optim.lr = 5e-4
  config.optim.b2 = 0.98
  config.optim.weight_decay = 0.2
  config.eval.batch_size = 500
  return config
