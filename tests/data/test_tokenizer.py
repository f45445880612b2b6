"""Tests for mmjax/data/tokenizer.py: encode/decode contract, training, caching."""

import os

import numpy as np
import pytest

from mmjax import paths
from mmjax.data import shapes
from mmjax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tok(cache_dir):
  return tokenizer_lib.shapes_tokenizer(cache_dir)


@pytest.fixture(scope="module")
def captions():
  return shapes.test_split()["captions"][:200]


def test_ids(tok):
  assert (tok.pad_id, tok.eos_id) == (0, 2)
  assert tok._sp.unk_id() == 1 and tok._sp.bos_id() == -1  # no BOS
  assert 48 < tok.vocab_size <= 256


def test_round_trip(tok, captions):
  tokens = tok.encode(captions, 32)
  assert tokens.shape == (200, 32) and tokens.dtype == np.int32
  assert tok.decode(tokens) == captions
  assert (tokens != tok._sp.unk_id()).all()  # every caption character is known
  # Decoding stops at the first EOS, whatever follows it (e.g. sampled ids).
  junk = tok.encode(["a red circle", "a blue ring"], 8)
  junk[0, -2:] = junk[1, :2]
  assert tok.decode(junk) == ["a red circle", "a blue ring"]


def test_padding_follows_eos(tok, captions):
  tokens = tok.encode(captions, 32)
  mask = tokens != tok.pad_id
  lengths = mask.sum(1)
  assert (lengths < 32).all()  # the shapes captions fit with room to spare
  for row, row_mask, n, text in zip(tokens, mask, lengths, captions):
    assert row_mask[:n].all() and not row_mask[n:].any()  # padding only at the end
    assert row[n - 1] == tok.eos_id and (row[:n - 1] != tok.eos_id).all()
    assert list(row[:n - 1]) == tok._sp.encode(text)


def test_truncation_keeps_eos(tok, captions):
  full = tok.encode(captions, 32)
  short = tok.encode(captions, 6)
  assert (short[:, -1] == tok.eos_id).all() and (short != tok.pad_id).all()
  np.testing.assert_array_equal(short[:, :5], full[:, :5])
  for text, prefix in zip(captions, tok.decode(short)):
    assert text.startswith(prefix) and len(prefix) < len(text)
  eos_only = tok.encode(captions[:3], 1)
  assert (eos_only == tok.eos_id).all()


def test_empty_caption_is_an_error_naming_its_index(tok):
  with pytest.raises(ValueError, match="text 2 is empty"):
    tok.encode(["a red circle", "a big blue ring", "  \t"], 8)
  with pytest.raises(ValueError, match="text 0"):
    tok.encode([""], 8)
  with pytest.raises(TypeError):
    tok.encode("a red circle", 8)  # a bare string is not a batch


def test_cache_is_reused(tok, cache_dir, captions, monkeypatch):
  path = os.path.join(cache_dir, "shapes_sp256.model")
  assert os.listdir(cache_dir) == ["shapes_sp256.model"]  # no temp files left behind

  def no_training(*args, **kwargs):
    raise AssertionError("the cached model should have been loaded")

  monkeypatch.setattr(tokenizer_lib, "train_sentencepiece", no_training)
  again = tokenizer_lib.shapes_tokenizer(cache_dir)
  assert again.path == path
  np.testing.assert_array_equal(again.encode(captions, 24), tok.encode(captions, 24))


def test_training_is_deterministic(tmp_path):
  corpus = shapes.caption_corpus(1000, seed=4)
  a = tokenizer_lib.train_sentencepiece(corpus, str(tmp_path / "a.model"), 128, "bpe")
  b = tokenizer_lib.train_sentencepiece(iter(corpus), str(tmp_path / "b.model"), 128, "bpe")
  with open(a, "rb") as fa, open(b, "rb") as fb:
    assert fa.read() == fb.read()
  assert sorted(os.listdir(tmp_path)) == ["a.model", "b.model"]


def test_small_corpus_trains_below_the_requested_size(tmp_path):
  path = tokenizer_lib.train_sentencepiece(
      ["a red circle", "a blue square left of a red circle"] * 20,
      str(tmp_path / "sub" / "tiny.model"), vocab_size=1000)  # default: unigram
  tok = tokenizer_lib.Tokenizer(path)
  assert tok.vocab_size < 1000
  assert tok.decode(tok.encode(["a red square"], 12)) == ["a red square"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
  def broken_replace(src, dst):
    raise OSError("disk full")

  # The model is written through mmjax.paths: a temporary file, then os.replace.
  monkeypatch.setattr(paths.os, "replace", broken_replace)
  with pytest.raises(OSError, match="disk full"):
    tokenizer_lib.train_sentencepiece(shapes.caption_corpus(200), str(tmp_path / "m.model"), 64)
  assert os.listdir(tmp_path) == []  # neither a model nor a temp file


def test_model_without_pad_is_rejected(tmp_path):
  import sentencepiece as spm
  path = str(tmp_path / "plain")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(shapes.caption_corpus(200)),
                                 model_prefix=path, vocab_size=40, minloglevel=2,
                                 hard_vocab_limit=False)
  with pytest.raises(ValueError, match="train_sentencepiece"):
    tokenizer_lib.Tokenizer(path + ".model")
