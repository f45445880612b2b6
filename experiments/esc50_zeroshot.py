"""Zero-shot classification of ESC-50 with a trained audio-text run, no training step:

  python -m mmjax.data.prepare esc50 --source ESC-50-master --data-dir /data/tfds \\
      --sample-rate 16000
  python -m mmjax.evaluate --config experiments/esc50_zeroshot.py:runs/audiocaps_clap \\
      --workdir runs/audiocaps_clap --config.data.data_dir=/data/tfds

The config is the run's own (its config.json), so the towers, the features and
the clip length are what it trained with, and the run's pinned tokenizer
encodes the prompts; only the dataset changes (prepare it at the run's
data.sample_rate). Each of the 50 classes is prompted with
audio_zeroshot.TEMPLATES and each clip of the test split, ESC-50's fold 5 (400
five-second clips, repeated to the run's clip length), takes the class of
highest similarity. Writes audio_zeroshot/top1, top5, mean_per_class and
macro_f1 to the workdir's eval.json.
"""

import json

import ml_collections

from mmjax import config_changes, paths


def get_config(arg: str = ""):
  if not arg:
    raise ValueError("give the workdir after the config file: "
                     "--config experiments/esc50_zeroshot.py:DIR")
  path = paths.join(arg, "config.json")
  if not paths.isfile(path):
    raise FileNotFoundError(f"{arg} has no config.json: give the workdir of a trained "
                            "audio-text run (e.g. runs/audiocaps_clap).")
  config = ml_collections.ConfigDict(config_changes.upgrade(json.loads(paths.read_text(path))))
  if "audio" not in config.model.towers:
    raise ValueError(f"{arg} is a run without an audio tower (towers: "
                     f"{list(config.model.towers)}); give an audio-text run's workdir.")
  config.data.name = "esc50"
  config.eval.num_images = -1  # the whole test fold
  config.eval.evaluators = ml_collections.ConfigDict(
      {"audio_zeroshot": dict(kind="audio_zeroshot", every=-1)})
  return config
