"""Fine-tune a released model (SigLIP, SigLIP 2, CLIP) on a prepared dataset.

First write the released checkpoint as an mmjax workdir, then train from it:

  python -m mmjax.import_weights siglip_b16_224.npz --variant B/16 \\
      --tokenizer c4_en.model --workdir runs/siglip_b16
  python -m mmjax.train --config experiments/released_finetune.py:runs/siglip_b16 \\
      --workdir runs/siglip_b16_coco --config.data.name=coco \\
      --config.data.data_dir=data/prepared

The argument after ':' is the imported workdir; ',locked' after it keeps the
image tower fixed and tunes the text side (LiT-style, as in "LiT: Zero-Shot
Transfer with Locked-image text Tuning"):

  --config experiments/released_finetune.py:runs/siglip_b16,locked

The model, image size, context length, tokenizer and pixel normalisation are
the imported model's (its config.json); the loss is the family's (sigmoid for
SigLIP, softmax for CLIP), starting from its learned scale and bias. Only the
data, the schedule and the evaluation are set here. Evaluate the imported model
itself, before any step, with experiments/released_eval.py.
"""

from mmjax.hub import workdir as released_workdir

# The image tower and its projection where it has one (SigLIP's has none).
IMAGE = ("image_.*",)


def get_config(arg: str = ""):
  source, _, mode = arg.partition(",")
  if not source:
    raise ValueError("give the imported workdir after the config file: "
                     "--config experiments/released_finetune.py:DIR[,locked]")
  if mode not in ("", "locked"):
    raise ValueError(f"unknown mode {mode!r} after the workdir; use DIR or DIR,locked.")
  config = released_workdir.read_config(source)
  config.init.checkpoint = source
  config.init.include = (".*",)
  config.batch_size = 256
  config.total_steps = 2000
  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  # Released weights are far along: a small peak rate, a short warmup.
  config.optim.lr = 1e-4 if mode == "locked" else 1e-5
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 1e-4
  config.optim.freeze = IMAGE if mode == "locked" else ()
  config.model.remat = True  # released towers are big; memory over a second forward pass
  config.eval.evaluators.retrieval.every = 0
  return config
