"""The default small model on any prepared image-text dataset: quick runs on new data.

  python -m mmjax.data.prepare jsonl --source captions.jsonl --images photos/ \
      --data-dir data/ --name my_photos
  python -m mmjax.train --config experiments/image_text_small.py \
      --config.data.name=my_photos --config.data.data_dir=data/ --workdir runs/small

SigLIP loss, the shapes model (conv-stem ViT/8, 2-layer text tower) at 64 px,
a 4k sentencepiece vocabulary trained on the dataset's train captions (kept
with the dataset), retrieval on the whole test split every 500 steps.
"""

from mmjax import configs


def get_config():
  config = configs.base()
  config.data.name = ""  # required: --config.data.name=NAME
  config.data.image_size = 64
  config.data.context_length = 32
  config.data.vocab_size = 4096
  config.data.num_workers = 2
  config.loss.name = "sigmoid_contrastive"
  config.model.temperature_init = 10.0
  config.model.bias_init = -10.0
  config.batch_size = 256
  config.total_steps = 5000
  config.eval_every = 500
  config.checkpoint_every = 1000
  config.optim.warmup_steps = 500
  config.optim.weight_decay = 1e-4
  config.eval.num_images = -1  # the whole test split
  config.eval.batch_size = 256
  return config
