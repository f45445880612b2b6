"""SentencePiece tokenizer, trained in-process from the captions (no download).

Ids: pad = 0, unk = 1, eos = 2, no bos. Every encoded row ends with EOS (the
text tower pools there), then padding; the padding mask is `tokens != pad_id`.
"""

import hashlib
import io
from typing import Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from mmjax import paths

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


def train_sentencepiece(sentences: Iterable[str], path: str, vocab_size: int,
                        model_type: str = "unigram") -> str:
  """Trains a SentencePiece model on `sentences` and writes it to `path`.

  The model is written to a temporary file beside `path` and moved into place
  (paths.write_bytes), so a concurrent reader or an interrupted run never sees a
  half-written model. Training is single-threaded, hence deterministic: the
  same sentences give the same model bytes. With hard_vocab_limit=False a
  small corpus yields fewer pieces than vocab_size rather than failing; read
  the real size from Tokenizer.vocab_size.

  Returns path.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model,
      vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
      pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1,
      character_coverage=1.0, num_threads=1, minloglevel=2)
  paths.makedirs(paths.dirname(paths.resolve(path)))
  paths.write_bytes(path, model.getvalue())  # atomic, local or remote
  return path


class Tokenizer:
  """Encodes captions to fixed-length int32 rows: ids, EOS, then padding."""

  def __init__(self, path: str):
    if not paths.isfile(path):
      raise FileNotFoundError(
          f"no sentencepiece model at {path}; point config.data.tokenizer at a "
          "`.model` file, or leave it empty to train one on the captions.")
    self.path = path
    self._model = paths.read_bytes(path)  # local or gs://
    self._sp = spm.SentencePieceProcessor(model_proto=self._model)
    if self._sp.pad_id() < 0 or self._sp.eos_id() < 0:
      raise ValueError(f"{path} has no pad or eos piece; train it with "
                       "mmjax.data.tokenizer.train_sentencepiece.")

  def __getstate__(self):
    # Pickled by path (grain sends the tokenizer to its worker processes).
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])

  def fingerprint(self) -> str:
    """sha256 of the model's bytes: equal fingerprints, equal token ids."""
    return hashlib.sha256(self._model).hexdigest()

  def model_bytes(self) -> bytes:
    """The serialized model, e.g. to keep a copy with a run."""
    return self._model

  @property
  def vocab_size(self) -> int:
    """Number of pieces actually trained (may be below the requested size)."""
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def encode(self, texts: Sequence[str], length: int) -> np.ndarray:
    """texts: N strings (used as is, not lower-cased) -> int32 [N, length].

    Each row holds the text's ids, then EOS, then pad_id; a text too long keeps
    its first length - 1 ids and still ends with EOS. Padding mask:
    `tokens != tokenizer.pad_id`.

    Raises ValueError naming the index of an empty or whitespace-only text: an
    EOS-only row would train on a caption that says nothing, so the dataset
    layer must count and skip such records instead.
    """
    if isinstance(texts, str):
      raise TypeError("encode takes a sequence of texts; wrap a single one as [text].")
    if length < 1:
      raise ValueError(f"length={length}; rows need room for at least the EOS token.")
    texts = list(texts)
    for i, text in enumerate(texts):
      if not text.strip():
        raise ValueError(f"text {i} is empty or whitespace only ({text!r}); "
                         "drop (and count) such captions before tokenizing.")
    out = np.full((len(texts), length), self.pad_id, np.int32)
    for row, ids in zip(out, self._sp.encode(texts)):
      ids = ids[:length - 1] + [self.eos_id]
      row[:len(ids)] = ids
    return out

  def decode(self, ids) -> list:
    """ids: int [N, L] (rows as from encode) -> N strings; stops at EOS, skips pad."""
    texts = []
    for row in np.asarray(ids).reshape(len(ids), -1).tolist():
      if self.eos_id in row:
        row = row[:row.index(self.eos_id)]
      texts.append(self._sp.decode([t for t in row if t != self.pad_id]))
    return texts


def shapes_tokenizer(cache_dir: str, vocab_size: int = 256) -> Tokenizer:
  """The tokenizer of the shapes captions, trained once and cached.

  The model lives at cache_dir/shapes_sp{vocab_size}.model; later calls (and
  other processes) load it instead of training again.

  BPE, not unigram: on this 47-word corpus sentencepiece's unigram trainer
  keeps ~70 pieces and splits most words into letters (25 tokens per caption on
  average, up to 35), while BPE learns one piece per word (11, up to 15).
  """
  path = paths.join(cache_dir, f"shapes_sp{vocab_size}.model")
  if not paths.exists(path):
    from mmjax.data import shapes  # only needed to train
    train_sentencepiece(shapes.caption_corpus(20000), path, vocab_size, model_type="bpe")
  return Tokenizer(path)


def cached_tokenizer(path: str, sentences: Callable[[], Iterable[str]],
                     vocab_size: int, model_type: str = "unigram") -> Tokenizer:
  """Loads the model at `path`, training it on `sentences()` first if missing.

  Training is deterministic and the write atomic, so processes that race to
  train the same model all end up reading identical bytes.
  """
  if not paths.exists(path):
    train_sentencepiece(sentences(), path, vocab_size, model_type=model_type)
  return Tokenizer(path)
