"""MultiTower's text tower kinds ("transformer", "bert"), the WordPiece tokenizer
selection of build.tokenizer, and the shapes pipeline on WordPiece tokens."""

import importlib.util
import os
import pathlib
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from mmjax import configs, registry
from mmjax.data import pipeline, shapes, shapes_heldout
from mmjax.data.wordpiece import WordPieceTokenizer
from mmjax.models import bert, multi_tower, pretrained, text
from mmjax.train import build
from mmjax.train import matching

from tests.train.conftest import tiny_config


def _experiment(name):
  path = pathlib.Path(__file__).resolve().parents[2] / "experiments" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


shapes_lit_minilm = _experiment("shapes_lit_minilm")

IMAGE = dict(kind="vit", patch_size=4, width=16, depth=1, num_heads=2)
TEXT = dict(vocab_size=40, context_length=8, width=16, depth=1, num_heads=2)
BERT = dict(kind="bert", vocab_size=40, context_length=8, width=16, depth=2, num_heads=2,
            mlp_dim=24, pool="mean")
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
TOKENS = np.array([[1, 5, 6, 2, 0, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0, 0],
                   [1, 9, 9, 9, 9, 9, 2, 0]], np.int32)
BATCH = {"image": IMAGES, "text": TOKENS}


def _multi_tower(text_kwargs, image_kwargs=IMAGE):
  return multi_tower.MultiTower(
      towers=FrozenDict(image=FrozenDict(image_kwargs), text=FrozenDict(text_kwargs)),
      embed_dim=8)


def _init(model):
  return nn.meta.unbox(model.init(jax.random.key(0), BATCH))["params"]


def _names(tree):
  return sorted("/".join(str(k.key) for k in path)
                for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


def test_transformer_text_tower_and_old_configs_keep_its_params_tree():
  explicit = _init(_multi_tower({**TEXT, "kind": "transformer"}))
  # A config saved before towers had to name their kind (model.text without
  # one) reads as the transformer: same tree, same initial values.
  upgraded = configs.upgrade({"model": {"image": IMAGE, "text": TEXT}})["model"]
  assert "image" not in upgraded and "text" not in upgraded
  assert upgraded["towers"]["text"] == {"kind": "transformer", **TEXT}
  assert upgraded["towers"]["image"] == IMAGE
  old = _init(_multi_tower(upgraded["towers"]["text"], upgraded["towers"]["image"]))
  assert jax.tree.structure(old) == jax.tree.structure(explicit)
  assert all(np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(old), jax.tree.leaves(explicit)))
  # The tree existing checkpoints were saved with (TextTransformer under text_tower).
  alone = nn.meta.unbox(text.TextTransformer(**TEXT).init(jax.random.key(0), TOKENS))
  assert _names(explicit["text_tower"]) == _names(alone["params"])
  assert {"token_embedding", "pos_embedding", "encoder"} == set(explicit["text_tower"])


def test_bert_tower_is_bert_encoder_then_projection():
  model = _multi_tower(BERT)
  params = _init(model)
  kwargs = {k: v for k, v in BERT.items() if k != "kind"}
  encoder = bert.BertEncoder(**kwargs)
  assert _names(params["text_tower"]) == _names(
      nn.meta.unbox(encoder.init(jax.random.key(0), TOKENS))["params"])
  pooled = encoder.apply({"params": params["text_tower"]}, TOKENS)
  want = pooled @ params["text_proj"]["kernel"]
  want = want / jnp.linalg.norm(want, axis=-1, keepdims=True)
  got = model.apply({"params": params}, TOKENS, method=model.encode_text)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(model.apply({"params": params}, BATCH)["z/text"], got,
                             atol=1e-5)
  # Padding never reaches the text embedding, as with the transformer tower.
  shorter = TOKENS[:2, :6]  # the first two rows with less padding
  np.testing.assert_allclose(model.apply({"params": params}, shorter,
                                         method=model.encode_text), got[:2], atol=1e-5)
  out = matching.encode_tokens(model, {"params": params}, IMAGES, TOKENS)
  assert set(out) == {"zimg", "image_tokens", "ztxt", "text_tokens", "text_mask"}
  assert out["text_tokens"].shape == (3, 8, 16)
  np.testing.assert_array_equal(out["text_mask"], TOKENS != 0)
  np.testing.assert_allclose(out["ztxt"], got, atol=1e-5)


def test_unknown_kind_and_foreign_keys_name_the_fix():
  with pytest.raises(registry.UnknownNameError,
                     match=r"unknown tower kind \(config.model.towers.text.kind\) 'gpt'\. "
                           r"Registered: \['ast', 'audio_cnn', 'bert', 'cnn', 'transformer', 'vit'\]"):
    _init(_multi_tower({**TEXT, "kind": "gpt"}))
  # build.model checks a tower's keys against its class before anything is traced.
  config = tiny_config(**{"model.towers.text": {**BERT, "causal": True}})
  with pytest.raises(configs.ConfigError,
                     match=r"config.model.towers.text has \['causal'\], which the 'bert' "
                           r"tower \(BertEncoder\) does not take; remove them"):
    build.model(config, vocab_size=40, pad_id=0)


def test_build_model_makes_a_bert_tower_from_the_config():
  config = tiny_config(**{"data.tokenizer": "minilm", "model.towers.text": dict(
      kind="bert", width=16, depth=1, num_heads=2, mlp_dim=32, pool="first")})
  tok = build.tokenizer(config, "/nonexistent-workdir")  # not written to
  model = build.model(config, tok)
  text_spec = model.towers["text"]
  assert text_spec["kind"] == "bert" and text_spec["pool"] == "first"
  assert text_spec["vocab_size"] == 30522 and text_spec["pad_id"] == 0
  assert text_spec["context_length"] == config.data.context_length


# ---------------------------------------------------------------------------
# Tokenizer selection (config.data.tokenizer).


@pytest.fixture(scope="module")
def minilm():
  return pretrained.minilm_files()


@pytest.mark.parametrize("which", ["minilm", "root", "tokenizer.json", "vocab.txt"])
def test_wordpiece_tokenizers_by_name_or_path(which, minilm, tmp_path):
  value = {"minilm": "minilm", "root": minilm.root,
           "tokenizer.json": os.path.join(minilm.root, "tokenizer.json"),
           "vocab.txt": os.path.join(minilm.root, "vocab.txt")}[which]
  tok = build.tokenizer(tiny_config(**{"data.tokenizer": value}), str(tmp_path))
  assert isinstance(tok, WordPieceTokenizer)
  assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (30522, 0, 102)
  assert not os.listdir(tmp_path)  # nothing trained or cached
  np.testing.assert_array_equal(tok.encode(["a red circle"], 6),
                                [[101, 1037, 2417, 4418, 102, 0]])


def test_tokenizer_paths_that_do_not_exist_are_named(tmp_path):
  missing = str(tmp_path / "no-model")
  with pytest.raises(FileNotFoundError, match=f"no sentencepiece model at {missing}"):
    build.tokenizer(tiny_config(**{"data.tokenizer": missing}), str(tmp_path))
  with pytest.raises(FileNotFoundError, match=f"no WordPiece vocabulary at {missing}.json"):
    build.tokenizer(tiny_config(**{"data.tokenizer": missing + ".json"}), str(tmp_path))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
    build.tokenizer(tiny_config(**{"data.tokenizer": str(tmp_path / "empty")}), str(tmp_path))


def test_shapes_pipeline_runs_on_wordpiece_tokens(minilm):
  config = tiny_config(**{"data.tokenizer": "minilm"})
  tok = build.tokenizer(config, "/nonexistent-workdir")
  # grain sends the batch maker (and its tokenizer, by path) to worker processes.
  make = pickle.loads(pickle.dumps(pipeline.batch_maker(config, tok, rows=[1, 3])))
  batch = make(2)
  assert batch["text"].shape == (2, config.data.context_length)
  raw = shapes.train_batch(config.seed, 2, config.batch_size, rows=[1, 3],
                           image_size=config.data.image_size)
  assert tok.decode(batch["text"]) == raw["caption"]  # uncased pieces of the caption
  assert (batch["text"][:, 0] == tok.cls_id).all()
  test = pipeline.test_data(config, tok)
  assert test["text"].shape == (5 * config.eval.num_images, config.data.context_length)


def test_minilm_experiment_reads_every_caption_whole():
  """Its context_length holds every train, test and held-out caption in
  WordPiece tokens ([CLS] and [SEP] included): none is cut."""
  config = shapes_lit_minilm.get_config()
  configs.validate(config)
  tok = WordPieceTokenizer(pretrained.minilm_files().root)
  captions = (shapes.test_split()["captions"] + shapes_heldout.heldout_split()["captions"]
              + shapes.caption_corpus(5000))
  length = config.data.context_length
  counts = (tok.encode(captions, length + 8) != tok.pad_id).sum(1)
  assert counts.max() <= length, captions[int(counts.argmax())]
  assert counts.max() >= length - 2  # and it is not far longer than needed
  for arm in shapes_lit_minilm.ARMS:
    configs.validate(shapes_lit_minilm.get_config(arm))
  with pytest.raises(ValueError, match="ARM one of"):
    shapes_lit_minilm.get_config("nope")
