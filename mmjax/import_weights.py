"""Writes a released model as an mmjax workdir.

  python -m mmjax.import_weights SOURCE --workdir DIR [--tokenizer FILE] [options]

SOURCE is a Hugging Face model directory (SiglipModel, Siglip2Model,
CLIPModel), a big_vision SigLIP .npz (with --variant, e.g. B/16, and optionally
--res and --text_len), or an open_clip checkpoint (.pt, .bin, .safetensors;
with --model_name, e.g. ViT-B-32). --tokenizer gives the vocabulary file a
checkpoint does not carry (SigLIP's sentencepiece .model, Gemma's for SigLIP 2,
CLIP's bpe_simple_vocab_16e6.txt.gz).

DIR then holds config.json, checkpoints/0 and tokenizer/ (see
mmjax/hub/workdir.py), and works wherever a run's workdir does:

  python -m mmjax.evaluate --config experiments/released_eval.py:DIR --workdir DIR ...
  python -m mmjax.train --config experiments/released_finetune.py:DIR --workdir RUN ...
  mmjax.hub.load(DIR)
"""

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "The new workdir to write.", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "The vocabulary file, where SOURCE has none.")
_VARIANT = flags.DEFINE_string("variant", None, "big_vision .npz: the ViT variant, e.g. B/16.")
_TEXT_VARIANT = flags.DEFINE_string("text_variant", None,
                                    "big_vision .npz: the text variant (default: the image's).")
_RES = flags.DEFINE_integer("res", None, "big_vision .npz: the image resolution (the position "
                            "embedding is resampled when it differs from the stored one).")
_TEXT_LEN = flags.DEFINE_integer("text_len", None, "big_vision .npz: the text length.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "open_clip: the model config name.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None,
                                    "open_clip: a model config JSON, for names mmjax does not know.")


def options() -> dict:
  """The reader options given on the command line (the rest left to defaults)."""
  given = {"tokenizer": _TOKENIZER.value, "variant": _VARIANT.value,
           "text_variant": _TEXT_VARIANT.value, "res": _RES.value,
           "text_len": _TEXT_LEN.value, "model_name": _MODEL_NAME.value,
           "model_config": _MODEL_CONFIG.value}
  return {k: v for k, v in given.items() if v is not None}


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("give one SOURCE: python -m mmjax.import_weights SOURCE --workdir DIR")
  from mmjax import hub  # pylint: disable=g-import-not-at-top
  from mmjax.hub import imported as imported_lib  # pylint: disable=g-import-not-at-top
  from mmjax.hub import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  imported = hub.read(argv[1], **options())
  for note in imported.notes:
    print(f"mmjax.import_weights: {note}", flush=True)
  workdir_lib.write(imported, _WORKDIR.value)
  print(f"Wrote {imported_lib.describe(imported)} from {imported.source} to {_WORKDIR.value} "
        f"(logit scale {imported.logit_scale:.4g}, bias {imported.logit_bias:.4g}).", flush=True)


if __name__ == "__main__":
  app.run(main)
