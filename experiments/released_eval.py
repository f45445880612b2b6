"""Zero-shot retrieval of a released model (or a run fine-tuned from one) on a
prepared dataset, with no training step:

  python -m mmjax.import_weights siglip_b16_224.npz --variant B/16 \\
      --tokenizer c4_en.model --workdir runs/siglip_b16
  python -m mmjax.evaluate --config experiments/released_eval.py:runs/siglip_b16 \\
      --workdir runs/siglip_b16 --config.data.name=coco --config.data.data_dir=data/prepared

The config is the workdir's own (config.json), so the evaluation computes what
the model was imported (or trained) to compute; only the dataset is chosen on
the command line. eval.json and the plots land in the workdir. For zero-shot
classification of image folders, see experiments/tools/zeroshot_folder.py.
"""

from mmjax.hub import workdir as released_workdir


def get_config(arg: str = ""):
  if not arg:
    raise ValueError("give the workdir after the config file: "
                     "--config experiments/released_eval.py:DIR")
  config = released_workdir.read_config(arg)
  config.eval.num_images = -1  # the whole test split
  config.eval.evaluators.retrieval.every = -1
  return config
