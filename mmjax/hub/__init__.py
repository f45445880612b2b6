"""Released models read into mmjax: `load(source, **options)`.

source is one of
  * a Hugging Face model directory (config.json + model.safetensors) of a
    SiglipModel, Siglip2Model or CLIPModel;
  * a big_vision SigLIP / SigLIP 2 `.npz`, with variant="B/16" (or "So400m/14",
    ...) and optionally res=, text_len=;
  * an open_clip checkpoint (.pt, .bin or .safetensors), with model_name=
    "ViT-B-32" (any open_clip config name, or model_config=);
  * an open_clip hub directory (open_clip_config.json + weights);
  * a workdir written by `python -m mmjax.import_weights` (or any mmjax run of
    a released model: its config.json, latest checkpoint and tokenizer).
tokenizer="FILE" supplies the vocabulary a checkpoint does not carry (the
sentencepiece .model of SigLIP, CLIP's bpe_simple_vocab_16e6.txt.gz).

Returns a `ReleasedModel` (see released.py). The readers never import torch or
TensorFlow: every format is read into NumPy and checked name by name.
"""

import os

from mmjax import paths


def read(source: str, **options):
  """The `Imported` record of `source` (see `load` for the kinds and options)."""
  from mmjax.hub import big_vision, hf, open_clip, workdir  # pylint: disable=g-import-not-at-top
  source = os.fspath(source)
  if paths.isdir(source):
    if paths.isdir(paths.join(source, "checkpoints")):
      return workdir.read(source, **options)
    if paths.isfile(paths.join(source, "open_clip_config.json")):
      return open_clip.read(source, **options)
    if paths.isfile(paths.join(source, "config.json")):
      return hf.read(source, **options)
    raise ValueError(f"{source} is a directory without config.json or open_clip_config.json: "
                     "give a Hugging Face model directory, an open_clip hub directory, an "
                     "mmjax workdir, or a checkpoint file.")
  if not paths.exists(source):
    raise FileNotFoundError(f"no checkpoint at {source}.")
  if source.endswith(".npz"):
    return big_vision.read(source, **options)
  if source.endswith((".pt", ".pth", ".bin", ".safetensors")):
    return open_clip.read(source, **options)
  raise ValueError(f"{source}: not a format mmjax reads. Give a big_vision .npz (with "
                   "variant=), an open_clip .pt / .bin / .safetensors (with model_name=), or "
                   "a Hugging Face model directory.")


def load(source: str, *, batch_size: int = 32, **options):
  """A released model from `source` (see the module docstring), ready to embed."""
  from mmjax.hub import released  # pylint: disable=g-import-not-at-top
  imported = read(source, **options)
  for note in imported.notes:
    print(f"mmjax.hub: {note}", flush=True)
  return released.ReleasedModel(imported, batch_size=batch_size)
