"""mmjax models exported as Hugging Face transformers checkpoints.

  export_hf.export(imported, "out/")   # config.json + model.safetensors

writes what `transformers.AutoModel.from_pretrained("out/")` loads as a
SiglipModel (family "siglip"), Siglip2Model ("siglip2") or CLIPModel ("clip"),
through the same weight maps `hf.read` uses, so `hf.read` gives back the same
params bit for bit. Any Imported whose model is one of those architectures
exports (a big_vision or open_clip import included); one that is not (another
pooling, a projection HF's model lacks, ...) is refused with the differences,
since transformers would compute something else.

Tokenizer and preprocessor files are not written; copy them beside the export
(spiece.model, tokenizer.model, or vocab.json + merges.txt) for a full HF repo.
"""

import dataclasses
import json
import math
import os

import numpy as np

from mmjax.hub import hf
from mmjax.hub import mapping
from mmjax.hub.imported import Imported
from mmjax.models import registry

_ARCH = {family: arch for arch, family in hf.ARCHITECTURES.items()}
_MODEL_TYPE = {"siglip": "siglip", "siglip2": "siglip2", "clip": "clip"}
# mmjax activation -> HF hidden_act (gelu_pytorch_tanh: HF's fast tanh GELU).
_HIDDEN_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
# Spec keys that do not change what a tower computes.
_FREE = ("pad_id", "dtype", "remat", "input")


def _tower(spec: dict) -> tuple[dict, dict]:
  """(HF sizes, hidden_act / eps) of one tower spec."""
  width = spec["width"]
  act = spec.get("act", "gelu_tanh")
  if act not in _HIDDEN_ACT:
    raise ValueError(f"activation {act!r} has no Hugging Face hidden_act; "
                     f"exportable: {sorted(_HIDDEN_ACT)}.")
  return {"hidden_size": width, "intermediate_size": spec.get("mlp_dim") or 4 * width,
          "num_hidden_layers": spec["depth"], "num_attention_heads": spec["num_heads"],
          "hidden_act": _HIDDEN_ACT[act], "layer_norm_eps": float(spec.get("ln_eps", 1e-6))}


# The vocabularies' own bos / eos ids, for a recipe that adds no such token
# (SigLIP 2's captions carry no bos, but Gemma's vocabulary has one: 2).
_VOCAB_IDS = {"siglip": {"bos_token_id": None, "eos_token_id": 1},
              "siglip2": {"bos_token_id": 2, "eos_token_id": 1}}


def _token_ids(imported: Imported) -> dict:
  """pad / bos / eos ids of the text config: CLIP's eos must be the last id
  (mmjax pools there); the others follow the tokenizer recipe."""
  text = imported.model["towers"]["text"]
  if imported.family == "clip":
    vocab = text["vocab_size"]
    return {"pad_token_id": text.get("pad_id", 0), "bos_token_id": vocab - 2,
            "eos_token_id": vocab - 1}
  recipe = imported.text or {}
  ids = {"pad_token_id": text.get("pad_id", hf.DEFAULTS["siglip"][0]["pad_token_id"])}
  for key, ours in (("bos_token_id", "bos_id"), ("eos_token_id", "eos_id")):
    value = recipe.get(ours)
    ids[key] = _VOCAB_IDS[imported.family][key] if value is None else value
  return ids


def config(imported: Imported) -> dict:
  """The config.json of `imported` as an HF model of its family."""
  family = imported.family
  if family not in _ARCH:
    raise ValueError(f"family {family!r} has no Hugging Face architecture; exportable: "
                     f"{', '.join(f'{f} ({a})' for f, a in _ARCH.items())}.")
  image, text = imported.model["towers"]["image"], imported.model["towers"]["text"]
  kind = _MODEL_TYPE[family]
  patch = image["patch_size"]
  vision = {"model_type": f"{kind}_vision_model", **_tower(image), "num_channels": 3,
            "patch_size": patch}
  if family == "siglip2":
    vision["num_patches"] = (imported.image_size // patch) ** 2
  else:
    vision["image_size"] = imported.image_size
  words = {"model_type": f"{kind}_text_model", **_tower(text),
           "vocab_size": text["vocab_size"],
           "max_position_embeddings": text["context_length"], **_token_ids(imported)}
  out = {"architectures": [_ARCH[family]], "model_type": kind, "dtype": "float32",
         "initializer_factor": 1.0}
  embed = imported.model["embed_dim"]
  if family == "clip":
    vision["projection_dim"] = words["projection_dim"] = embed
    out["projection_dim"] = embed
  else:
    vision["vision_use_head"] = True
    words["projection_size"] = embed
  out.update(text_config=words, vision_config=vision)
  return out


def _normalised(spec: dict) -> dict:
  """A tower spec with its class's defaults filled in (and MultiTower's proj,
  proj_bias), so two specs that compute the same thing compare equal."""
  spec = dict(spec)
  kind = spec.pop("kind", None)
  fields = dataclasses.fields(registry.tower_class(kind, "tower"))
  out = {f.name: f.default for f in fields
         if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}
  out["kind"] = kind
  out.update(proj=True, proj_bias=False)
  out.update(spec)
  if out.get("mlp_dim") is None and "width" in out:
    out["mlp_dim"] = 4 * out["width"]
  return {k: v for k, v in out.items() if k not in _FREE}


def check_exportable(imported: Imported, cfg: dict) -> None:
  """Raises ValueError listing where `imported` computes something other than
  the HF model of config `cfg` would."""
  family = imported.family
  text, vision, top = hf.sub_configs(cfg, family)
  theirs = hf.model_kwargs(family, text, vision, top, pad_id=0)
  ours = imported.model
  problems = []
  for modality in ("image", "text"):
    a, b = _normalised(ours["towers"][modality]), _normalised(theirs["towers"][modality])
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        problems.append(f"{modality} tower {key}: {a.get(key)!r} here, "
                        f"{b.get(key)!r} in a {_ARCH[family]}")
  if ours.get("embed_dim") != theirs["embed_dim"]:
    problems.append(f"embed_dim {ours.get('embed_dim')} here, {theirs['embed_dim']} in HF")
  if (ours.get("bias_init") is None) != (theirs["bias_init"] is None):
    problems.append("a logit bias here but not in HF" if family == "clip"
                    else "no logit bias here, one in HF")
  if ours.get("heads") or ours.get("pair_scales") or ours.get("teacher_dim"):
    problems.append("heads / pair_scales / teacher_dim, which HF's model has no place for")
  log_scale = float(np.asarray(imported.params["log_scale"]))
  if log_scale > math.log(ours.get("max_temperature", 100.0)):
    problems.append(f"the logit scale {math.exp(log_scale):.4g} is clipped at "
                    f"max_temperature={ours.get('max_temperature', 100.0)} here, not in HF")
  if problems:
    raise ValueError(f"{imported.source} cannot be exported as a {_ARCH[family]}:\n  " +
                     "\n  ".join(problems))


def export(imported: Imported, out_dir: str) -> str:
  """Writes out_dir/config.json and out_dir/model.safetensors (float32).

  Returns out_dir. Raises ValueError where transformers' model of the family
  would compute something other than `imported` (see check_exportable).
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  cfg = config(imported)
  check_exportable(imported, cfg)
  arrays = mapping.write(imported.params, hf.entries(imported.family, imported.model))
  os.makedirs(out_dir, exist_ok=True)
  # transformers reads the "format" metadata to know the tensors are torch's layout.
  save_file(arrays,
            os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
    f.write("\n")
  return out_dir
