"""Writes a released model (or a run fine-tuned from one) as a Hugging Face directory.

  python -m mmjax.export_weights SOURCE --out DIR

SOURCE is anything `mmjax.hub.read` takes (an mmjax workdir of a released
model, a big_vision .npz with --variant, a Hugging Face directory). DIR gets
config.json and model.safetensors that transformers loads as SiglipModel,
Siglip2Model or CLIPModel; reading DIR back with mmjax gives the same params
bit for bit. The tokenizer and preprocessor files are not written: take them
from the original release.
"""

from absl import app
from absl import flags

_OUT = flags.DEFINE_string("out", None, "The Hugging Face directory to write.", required=True)
_VARIANT = flags.DEFINE_string("variant", None, "big_vision .npz: the ViT variant, e.g. B/16.")
_STEP = flags.DEFINE_integer("step", None, "mmjax workdir: the checkpoint step (default latest).")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("give one SOURCE: python -m mmjax.export_weights SOURCE --out DIR")
  from mmjax import hub  # pylint: disable=g-import-not-at-top
  from mmjax.hub import export_hf  # pylint: disable=g-import-not-at-top
  options = {k: v for k, v in (("variant", _VARIANT.value), ("step", _STEP.value))
             if v is not None}
  imported = hub.read(argv[1], **options)
  export_hf.export(imported, _OUT.value)
  print(f"Wrote {imported.family} from {imported.source} to {_OUT.value} "
        "(config.json, model.safetensors).", flush=True)


if __name__ == "__main__":
  app.run(main)
