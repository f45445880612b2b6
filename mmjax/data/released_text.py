"""The tokenizers of released models, as their originals run them.

A recipe is a plain JSON-able dict (it goes into `Imported.text` and a run's
config.json); `ReleasedTokenizer(recipe)` runs it with mmjax's tokenizer
interface (`encode(texts, length) -> int32 [N, length]`, `decode`, `pad_id`,
`eos_id`, `vocab_size`, `fingerprint`).

Recipe fields:
  name: the preset it came from (messages only).
  kind: "sentencepiece" | "clip_bpe".
  file: the vocabulary (a .model, a .txt.gz, an HF directory or its
    vocab.json / merges.txt), or None until the user gives one.
  length: tokens per row.
  bos_id: id written first in every row, or None.
  eos_id: id ending every row; "sticky": a text too long keeps its first
    length - 1 (- bos) ids and still ends with EOS.
  pad_id: id filling the row after EOS. No recipe uses an attention mask: the
    released text towers attend to the padding as they were trained to (SigLIP)
    or never see it (CLIP is causal and pools at EOT).
  lower: False, True (Python's str.lower, full Unicode) or "ascii" (only A-Z,
    as TensorFlow's tf.strings.lower, which big_vision uses).
  clean: None (text as is), "clip" (ftfy-like fixes, HTML unescaping, strip,
    whitespace collapsed), "canonicalize" (that, then "_" -> " " and ASCII
    punctuation removed, as open_clip does for its SigLIP ports) or
    "hf_siglip" (ASCII punctuation removed, whitespace collapsed, as
    transformers' SiglipTokenizer does). Applied before `lower`.

Presets (what the original code does; the two SigLIP flavours differ):
  siglip: big_vision's `tokenize(max_len=64, model="c4_en"|"mc4", eos="sticky",
    pad_value=1)`: the op lower-cases by default (ASCII only, tf.strings.lower),
    keeps punctuation, appends </s> (1), pads with 1. Some So400m/14 at 224
    checkpoints use 16 tokens: pass length=16.
  hf_siglip: transformers' SiglipTokenizer on the same vocabulary (spiece.model):
    Unicode lower-casing and punctuation removal (do_lower_case=True), </s>
    appended, padding="max_length" with </s> (1). Same ids as "siglip" for
    lower-case text without punctuation or non-ASCII capitals.
  siglip2: big_vision's SigLIP 2 demo `lower|tok(length=64, model="gemma",
    bos="no", eos="sticky")`: Gemma's sentencepiece, ASCII lower-casing, no
    <bos>, <eos> (1) appended, padded with <pad> (0).
  hf_siglip2: transformers' Siglip2Tokenizer / GemmaTokenizerFast as
    Siglip2Processor calls it (add_bos_token=False, add_eos_token=True,
    padding="max_length", max_length=64, right padding): Unicode lower-casing.
  clip: OpenAI CLIP / open_clip SimpleTokenizer / HF CLIPModel: byte-level BPE
    (mmjax.data.clip_bpe), ftfy-like cleaning, lower case, <start_of_text>
    (49406) first, <end_of_text> (49407) last even when truncated, 77 tokens,
    padded with 0 as open_clip does (HF pads with 49407; the causal tower
    pools at the first EOT, so either gives the same embedding).
  open_clip_siglip / open_clip_siglip2: open_clip's ports of SigLIP (c4_en /
    mc4 vocabulary) and SigLIP 2 (Gemma vocabulary): its "canonicalize"
    cleaner, then the HF tokenizer with padding="max_length", truncation,
    64 tokens; EOS 1 appended, pad 1 (SigLIP) or 0 (SigLIP 2).
"""

import copy
import hashlib
import importlib.util
import json
import os
import re
import string
from typing import Optional, Sequence

import numpy as np
import sentencepiece as spm

from mmjax import paths
from mmjax.data import clip_bpe

RECIPE_FILE = "mmjax_tokenizer.json"
KINDS = ("sentencepiece", "clip_bpe")
CLEANERS = (None, "clip", "canonicalize", "hf_siglip")
SPM_NAMES = ("spiece.model", "tokenizer.model", "sentencepiece.model")
CLIP_GZ = "bpe_simple_vocab_16e6.txt.gz"

_DOWNLOAD = {
    "c4_en": "big_vision's SigLIP vocabulary c4_en "
             "(gs://t5-data/vocabs/cc_en.32000/sentencepiece.model; mc4 for i18n "
             "models: gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model), "
             "or spiece.model from the Hugging Face model repository",
    "gemma": "Gemma's sentencepiece model (gs://big_vision/gemma_tokenizer.model), "
             "or tokenizer.model from the Hugging Face model repository",
    "clip": f"CLIP's {CLIP_GZ} (shipped in the open_clip_torch package and in "
            "openai/CLIP), or vocab.json + merges.txt from the Hugging Face repository",
}

_PRESETS = {
    "siglip": dict(kind="sentencepiece", length=64, bos_id=None, eos_id=1, pad_id=1,
                   lower="ascii", clean=None, vocab="c4_en"),
    "hf_siglip": dict(kind="sentencepiece", length=64, bos_id=None, eos_id=1, pad_id=1,
                      lower=True, clean="hf_siglip", vocab="c4_en"),
    "siglip2": dict(kind="sentencepiece", length=64, bos_id=None, eos_id=1, pad_id=0,
                    lower="ascii", clean=None, vocab="gemma"),
    "hf_siglip2": dict(kind="sentencepiece", length=64, bos_id=None, eos_id=1, pad_id=0,
                       lower=True, clean=None, vocab="gemma"),
    "clip": dict(kind="clip_bpe", length=77, bos_id=49406, eos_id=49407, pad_id=0,
                 lower=True, clean="clip", vocab="clip"),
    "open_clip_siglip": dict(kind="sentencepiece", length=64, bos_id=None, eos_id=1,
                             pad_id=1, lower=True, clean="canonicalize", vocab="c4_en"),
    "open_clip_siglip2": dict(kind="sentencepiece", length=64, bos_id=None, eos_id=1,
                              pad_id=0, lower=True, clean="canonicalize", vocab="gemma"),
}
PRESETS = tuple(_PRESETS)


def preset(name: str, *, file: Optional[str] = None, length: Optional[int] = None) -> dict:
  """The tokenizer recipe of a released model family (see the module docstring).

  file: the vocabulary found beside the checkpoint or given by the user. A
    CLIP vocabulary is read for its sot/eot ids (49406/49407 in the released
    one); the sentencepiece ids are fixed by the released layouts.
  length: overrides the family's tokens per row.
  """
  if name not in _PRESETS:
    raise ValueError(f"unknown tokenizer preset {name!r}; choose one of {PRESETS}.")
  recipe = {k: v for k, v in _PRESETS[name].items() if k != "vocab"}
  recipe.update(name=name, file=None if file is None else os.fspath(file))
  if length is not None:
    recipe["length"] = int(length)
  if file is not None and recipe["kind"] == "clip_bpe":
    bpe = _Vocabulary(recipe).clip
    recipe.update(bos_id=bpe.sot_id, eos_id=bpe.eot_id)
  return recipe


# ---- text cleaning --------------------------------------------------------

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def canonicalize(text: str) -> str:
  """open_clip's SigLIP cleaner after basic_clean ("_" to space, no ASCII
  punctuation, whitespace collapsed); lower-casing is the recipe's `lower`."""
  return clip_bpe.whitespace_clean(text.replace("_", " ").translate(_PUNCTUATION))


def prepare(text: str, recipe: dict) -> str:
  """One raw text -> what the recipe's tokenizer model sees (clean, then lower)."""
  clean, lower = recipe["clean"], recipe["lower"]
  if clean == "clip":
    text = clip_bpe.whitespace_clean(clip_bpe.basic_clean(text))
  elif clean == "canonicalize":
    text = canonicalize(clip_bpe.basic_clean(text))
  elif clean == "hf_siglip":
    # SiglipTokenizer reads "▁" (sentencepiece's space) as a space first.
    text = text.replace("\u2581", " ")
    text = re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()
  if lower == "ascii":
    text = text.translate(_ASCII_LOWER)
  elif lower:
    text = text.lower()
  return text


# ---- vocabulary files -----------------------------------------------------


def download_hint(recipe: dict) -> str:
  """What vocabulary file the recipe needs and where the originals keep it."""
  vocab = _PRESETS.get(recipe.get("name"), {}).get("vocab")
  return _DOWNLOAD.get(vocab) or _DOWNLOAD["clip" if recipe["kind"] == "clip_bpe" else "c4_en"]


def _missing(recipe: dict, detail: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"{detail}: the {recipe.get('name', recipe['kind'])} tokenizer needs "
      f"{download_hint(recipe)}. Download it and pass its path with --tokenizer PATH "
      "(or released_text.preset(..., file=PATH)).")


def is_saved(directory) -> bool:
  """True if `directory` holds a tokenizer written by ReleasedTokenizer.save."""
  return bool(directory) and paths.isfile(paths.join(directory, RECIPE_FILE))


def _bundled_clip_vocab() -> Optional[str]:
  """open_clip's copy of the CLIP merges, found without importing open_clip."""
  spec = importlib.util.find_spec("open_clip")
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, CLIP_GZ)
    if os.path.isfile(path):
      return path
  return None


def _resolve(recipe: dict) -> list:
  """The recipe's vocabulary as a list of file paths (two for an HF CLIP pair)."""
  file = recipe.get("file")
  if file is None and recipe["kind"] == "clip_bpe":
    file = _bundled_clip_vocab()
  if file is None:
    raise _missing(recipe, "no vocabulary file given")
  if paths.isdir(file):
    names = paths.listdir(file)
    if recipe["kind"] == "sentencepiece":
      found = [n for n in SPM_NAMES if n in names]
      if not found:
        raise _missing(recipe, f"{file} holds none of {SPM_NAMES}")
      return [paths.join(file, found[0])]
    if CLIP_GZ in names:
      return [paths.join(file, CLIP_GZ)]
    if "vocab.json" in names and "merges.txt" in names:
      return [paths.join(file, "vocab.json"), paths.join(file, "merges.txt")]
    raise _missing(recipe, f"{file} holds neither {CLIP_GZ} nor vocab.json + merges.txt")
  if not paths.isfile(file):
    raise _missing(recipe, f"no vocabulary at {file}")
  if recipe["kind"] == "clip_bpe" and paths.basename(file) in ("vocab.json", "merges.txt"):
    pair = [paths.join(paths.dirname(file), n) for n in ("vocab.json", "merges.txt")]
    if not all(paths.isfile(p) for p in pair):
      raise _missing(recipe, f"{file} needs vocab.json and merges.txt side by side")
    return pair
  return [file]


class _Vocabulary:
  """The loaded vocabulary of a recipe: file bytes and the model over them."""

  def __init__(self, recipe: dict):
    self.files = _resolve(recipe)
    self.blobs = [paths.read_bytes(f) for f in self.files]
    self.sp = self.clip = None
    if recipe["kind"] == "sentencepiece":
      self.sp = spm.SentencePieceProcessor(model_proto=self.blobs[0])
      self.size = self.sp.get_piece_size()
    else:
      if len(self.blobs) == 2:
        vocab, merges = clip_bpe.read_hf(*self.blobs)
      else:
        merges = clip_bpe.merges_from_gz(self.blobs[0])
        vocab = clip_bpe.vocab_from_merges(merges)
      self.clip = clip_bpe.ClipBpe(vocab, merges)
      self.size = self.clip.vocab_size


def _check(recipe: dict) -> dict:
  recipe = copy.deepcopy(dict(recipe))
  for key in ("kind", "length", "eos_id", "pad_id", "lower", "clean"):
    if key not in recipe:
      raise ValueError(f"tokenizer recipe lacks {key!r}; build it with "
                       f"mmjax.data.released_text.preset(name) ({PRESETS}).")
  recipe.setdefault("bos_id", None)
  recipe.setdefault("file", None)
  if recipe["kind"] not in KINDS:
    raise ValueError(f"recipe kind {recipe['kind']!r}; expected one of {KINDS}.")
  if recipe["clean"] not in CLEANERS:
    raise ValueError(f"recipe clean {recipe['clean']!r}; expected one of {CLEANERS}.")
  if recipe["lower"] not in (True, False, "ascii"):
    raise ValueError(f"recipe lower {recipe['lower']!r}; expected True, False or 'ascii'.")
  return recipe


class ReleasedTokenizer:
  """A released model's tokenizer: texts -> int32 [N, length] rows.

  Each row: [bos_id] ids... eos_id, then pad_id. Pickled by recipe (grain
  sends the tokenizer to its worker processes, which read the file again).
  """

  def __init__(self, recipe: dict):
    recipe = _check(recipe)
    self._vocab = _Vocabulary(recipe)
    if recipe["file"] is None:  # e.g. open_clip's bundled CLIP vocabulary
      recipe["file"] = self._vocab.files[-1]
    self.recipe = recipe
    # What config.data.tokenizer names (checkpoint pins quote it): the saved
    # directory once load() set it, else the vocabulary file.
    self.path = recipe["file"]
    for key in ("bos_id", "eos_id", "pad_id"):
      value = recipe[key]
      if value is not None and not 0 <= value < self._vocab.size:
        raise ValueError(
            f"recipe {key}={value} is outside the vocabulary of {self._vocab.size} ids in "
            f"{recipe['file']}; make the recipe with preset(name, file=...) so the "
            "ids come from the vocabulary.")

  def __getstate__(self):
    return {"recipe": self.recipe, "path": self.path}

  def __setstate__(self, state):
    self.__init__(state["recipe"])
    self.path = state["path"]

  @property
  def vocab_size(self) -> int:
    return self._vocab.size

  @property
  def pad_id(self) -> int:
    return self.recipe["pad_id"]

  @property
  def eos_id(self) -> int:
    return self.recipe["eos_id"]

  @property
  def bos_id(self) -> Optional[int]:
    return self.recipe["bos_id"]

  @property
  def length(self) -> int:
    return self.recipe["length"]

  def fingerprint(self) -> str:
    """sha256 over the recipe (less its path) and the vocabulary bytes."""
    digest = hashlib.sha256()
    recipe = {k: v for k, v in self.recipe.items() if k != "file"}
    digest.update(json.dumps(recipe, sort_keys=True).encode("utf-8"))
    for blob in self._vocab.blobs:
      digest.update(hashlib.sha256(blob).digest())
    return digest.hexdigest()

  def ids(self, texts: Sequence[str]) -> list:
    """Texts -> their ids as the recipe's model gives them: no specials, no limit."""
    prepared = [prepare(t, self.recipe) for t in texts]
    if self._vocab.sp is not None:
      return self._vocab.sp.encode(prepared)
    return self._vocab.clip.encode(prepared)

  def encode(self, texts: Sequence[str], length: Optional[int] = None, *,
             allow_empty: bool = False) -> np.ndarray:
    """texts: N strings -> int32 [N, length] (length defaults to the recipe's).

    A text too long keeps its first ids and still ends with EOS. Raises
    ValueError naming the index of an empty or whitespace-only text unless
    allow_empty (then its row is [bos] EOS and padding).
    """
    if isinstance(texts, str):
      raise TypeError("encode takes a sequence of texts; wrap a single one as [text].")
    texts = list(texts)
    length = self.length if length is None else int(length)
    head = [] if self.bos_id is None else [self.bos_id]
    if length < len(head) + 1:
      raise ValueError(f"length={length}; rows need room for {len(head) + 1} special tokens.")
    if not allow_empty:
      for i, text in enumerate(texts):
        if not text.strip():
          raise ValueError(f"text {i} is empty or whitespace only ({text!r}); drop (and "
                           "count) such texts first, or pass allow_empty=True.")
    out = np.full((len(texts), length), self.pad_id, np.int32)
    for row, ids in zip(out, self.ids(texts)):
      ids = (head + ids)[:length - 1] + [self.eos_id]
      row[:len(ids)] = ids
    return out

  def decode(self, ids) -> list:
    """ids: int [N, L] (rows as from encode) -> N strings; stops at EOS."""
    texts = []
    for row in np.asarray(ids).reshape(len(ids), -1).tolist():
      if row and self.bos_id is not None and row[0] == self.bos_id:
        row = row[1:]
      if self.eos_id in row:
        row = row[:row.index(self.eos_id)]
      else:
        while row and row[-1] == self.pad_id:
          row = row[:-1]
      if self._vocab.sp is not None:
        texts.append(self._vocab.sp.decode(row))
      else:
        texts.append(self._vocab.clip.decode(row))
    return texts

  def save(self, directory: str) -> str:
    """Writes the recipe (mmjax_tokenizer.json) and a copy of the vocabulary.

    The recipe's `file` is relative to `directory`, so the folder can move.
    Returns directory.
    """
    paths.makedirs(directory)
    for file, blob in zip(self._vocab.files, self._vocab.blobs):
      paths.write_bytes(paths.join(directory, paths.basename(file)), blob)
    recipe = dict(self.recipe, file=paths.basename(self._vocab.files[-1]))
    paths.write_text(paths.join(directory, RECIPE_FILE), json.dumps(recipe, indent=2) + "\n")
    return directory

  @classmethod
  def load(cls, directory: str) -> "ReleasedTokenizer":
    """The tokenizer that `save(directory)` wrote."""
    path = paths.join(directory, RECIPE_FILE)
    if not paths.isfile(path):
      raise FileNotFoundError(f"no {RECIPE_FILE} in {directory}; it is written by "
                              "ReleasedTokenizer.save(directory).")
    recipe = json.loads(paths.read_text(path))
    if recipe.get("file") is not None:
      recipe["file"] = paths.join(directory, recipe["file"])
    tok = cls(recipe)
    tok.path = directory
    return tok
