"""Warm start from another run's checkpoint or a pretrained text tower, and frozen
params (LiT)."""

import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import save_file

from mmjax import configs
from mmjax.data import pipeline
from mmjax.models import bert, pretrained
from mmjax.parallel import partitioning
from mmjax.train import build
from mmjax.train import perf, warm_start
from mmjax.train import state as state_lib

from tests.train.conftest import tiny_config

pytestmark = pytest.mark.slow  # trains runs to warm-start from

IMAGE = ("image_tower/.*", "image_proj/.*")
TOP_LEVEL = ["bias", "image_proj", "image_tower", "log_scale", "text_proj", "text_tower"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return build.tokenizer(tiny_config(), str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def model(tok):
  return build.model(tiny_config(), tok)


def _params(model, seed, config=None):
  ex = build.example_batch(config or tiny_config(), batch_size=1)
  return jax.jit(lambda rng: state_lib.init_params(model, rng, ex))(jax.random.key(seed))


@pytest.fixture(scope="module")
def params(model):
  """Fresh params (seed 0) and another run's (seed 1, shifted so that even the
  constant-initialised leaves differ), as host arrays."""
  other = jax.tree.map(lambda x: np.asarray(x + 1, x.dtype), jax.device_get(_params(model, 1)))
  return jax.device_get(_params(model, 0)), other


def _save(directory, step, params, composite):
  """A TrainState checkpoint as a CheckpointManager writes it: one unnamed item
  ("default"), or the Composite layout (the state beside other items)."""
  tx, _ = state_lib.optimizer(tiny_config())
  state = state_lib.create(params, tx)
  mngr = ocp.CheckpointManager(str(directory),
                               options=ocp.CheckpointManagerOptions(create=True))
  if composite:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave({"seed": 1}))
  else:
    args = ocp.args.StandardSave(state)
  mngr.save(step, args=args)
  mngr.wait_until_finished()
  mngr.close()


def _assert_same(a, b):
  """Same paths, bitwise equal leaves."""
  a, b = warm_start.named_leaves(a), warm_start.named_leaves(b)
  assert list(a) == list(b)
  for name in a:
    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


# Paths and merging.

def test_paths_are_slash_joined_module_names(params):
  names = warm_start.named_leaves(params[0])
  assert "image_tower/encoder/block0/mlp/fc1/kernel" in names
  assert "text_tower/token_embedding" in names
  assert "log_scale" in names
  assert sorted({n.split("/")[0] for n in names}) == TOP_LEVEL


def test_merge_copies_exactly_the_matched_leaves(params):
  fresh, other = params
  merged, report = warm_start.merge(fresh, other, IMAGE)
  copied = set()
  for name, leaf in warm_start.named_leaves(merged).items():
    if name.startswith("image_"):
      copied.add(name)
      np.testing.assert_array_equal(leaf, warm_start.named_leaves(other)[name])
      assert not np.array_equal(leaf, warm_start.named_leaves(fresh)[name]), name
    else:  # untouched: the very same array, bitwise
      assert leaf is warm_start.named_leaves(fresh)[name], name
  assert report.names == tuple(sorted(copied))
  assert report.tensors == len(copied) == 18
  assert report.params == sum(np.size(warm_start.named_leaves(fresh)[n]) for n in copied)
  assert jax.tree.structure(merged) == jax.tree.structure(fresh)


def test_patterns_match_whole_paths(params):
  fresh, other = params
  # "image" alone is a prefix, not a path: fullmatch selects nothing.
  with pytest.raises(ValueError, match=r"\['image'\] match no parameter"):
    warm_start.merge(fresh, other, ("image",))
  _, report = warm_start.merge(fresh, other, ("log_scale", "bias"))
  assert report.names == ("bias", "log_scale")  # not image_tower/.../bias


def test_unmatched_pattern_lists_the_top_level_paths(params):
  with pytest.raises(ValueError) as info:
    warm_start.merge(params[0], params[1], ("image_tower/.*", "img/.*"))
  message = str(info.value)
  assert "['img/.*'] match no parameter" in message
  assert "config.init.include" in message
  assert str(TOP_LEVEL) in message


def test_shape_mismatch_lists_every_path_with_both_shapes(tok, params):
  wider = tiny_config(**{"model.towers.image": dict(
      kind="vit", patch_size=8, width=32, depth=1, num_heads=2, pool="gap")})
  other = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: _params(build.model(wider, tok), 1, wider)))
  del other["image_tower"]["pos_embedding"]
  with pytest.raises(ValueError) as info:
    warm_start.merge(params[0], other, IMAGE)
  message = str(info.value)
  assert "image_tower/embedding/kernel: (192, 16) float32 here, (192, 32) float32 in " \
         "the checkpoint" in message
  assert "image_proj/kernel: (16, 8) float32 here, (32, 8) float32" in message
  assert "image_tower/pos_embedding: (1, 4, 16) float32 here, missing" in message
  assert "do not fit" in message and "text_tower" not in message


# Loading checkpoints.

@pytest.fixture(scope="module")
def runs(tmp_path_factory, params):
  """Two source workdirs, one per layout, each with steps 2 (seed 0 params) and
  5 (seed 1 params)."""
  out = {}
  for layout in ("plain", "composite"):
    workdir = tmp_path_factory.mktemp(layout)
    for step, p in ((2, params[0]), (5, params[1])):
      _save(workdir / "checkpoints", step, p, layout == "composite")
    out[layout] = str(workdir)
  return out


@pytest.mark.parametrize("layout", ["plain", "composite"])
def test_load_params_from_workdir_and_step_dirs(runs, params, layout):
  workdir = runs[layout]
  item = "state" if layout == "composite" else "default"
  assert item in os.listdir(os.path.join(workdir, "checkpoints", "5"))
  _assert_same(warm_start.load_params(workdir), params[1])  # latest
  _assert_same(warm_start.load_params(workdir, step=2), params[0])
  ckpts = os.path.join(workdir, "checkpoints")
  step2 = warm_start.Source(os.path.join(ckpts, "2", item), 2)
  assert warm_start.resolve(workdir) == (os.path.join(ckpts, "5", item), 5)
  assert warm_start.resolve(ckpts, 2) == step2
  assert warm_start.resolve(os.path.join(ckpts, "2")) == step2
  assert warm_start.resolve(os.path.join(ckpts, "2", item), 2) == step2
  loaded = warm_start.load_params(os.path.join(workdir, "checkpoints", "2"))
  _assert_same(loaded, params[0])
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded))


def test_missing_step_and_missing_dir_are_named(runs, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3 .* steps \[2, 5\]"):
    warm_start.load_params(runs["plain"], step=3)
  with pytest.raises(ValueError, match=r"asked for step 5 but .* step 2"):
    warm_start.load_params(os.path.join(runs["plain"], "checkpoints", "2"), step=5)
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    warm_start.load_params(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    warm_start.load_params(str(tmp_path / "nowhere"))


def test_apply_reads_the_config(runs, params, capsys):
  config = tiny_config()
  assert warm_start.apply(config, params[0]) is params[0]  # "" = no warm start
  with config.unlocked():
    config.init.checkpoint = runs["composite"]
    config.init.include = IMAGE
  merged = warm_start.apply(config, params[0])
  line = capsys.readouterr().out.strip()
  assert line == (f"warm start: 18 tensors ({_count(params[0], 'image_'):,} params) from "
                  f"{runs['composite']} step 5 matching {list(IMAGE)}")
  _assert_same(merged["image_tower"], params[1]["image_tower"])
  assert all(a is b for a, b in zip(jax.tree.leaves(merged["text_tower"]),
                                    jax.tree.leaves(params[0]["text_tower"])))

  config.init.checkpoint = None  # an experiment's placeholder, left unset
  with pytest.raises(ValueError, match=r"config.init.checkpoint is required"):
    warm_start.apply(config, params[0])
  config.init.checkpoint = os.path.join(runs["plain"], "missing")
  with pytest.raises(FileNotFoundError, match=r"config.init.checkpoint='.*missing' does "
                                              r"not exist"):
    warm_start.apply(config, params[0])


def _count(params, prefix):
  return sum(np.size(x) for n, x in warm_start.named_leaves(params).items()
             if n.startswith(prefix))


# Config validation.

@pytest.mark.parametrize("key,value,match", [
    ("optim.freeze", ("image_(",), r"config.optim.freeze pattern 'image_\(' is not a valid"),
    ("init.include", ("[",), r"config.init.include pattern '\['"),
    ("init.include", (), r"config.init.include is empty"),
    ("init.step", -2, r"config.init.step=-2"),
])
def test_bad_patterns_and_steps_name_the_key(key, value, match):
  with pytest.raises(configs.ConfigError, match=match):
    configs.validate(tiny_config(**{key: value}))


def test_nonexistent_checkpoint_still_validates():
  configs.validate(tiny_config(**{"init.checkpoint": "/no/such/run"}))


# Freezing.

def test_frozen_mask(params):
  mask = warm_start.named_leaves(warm_start.frozen_mask(params[0], IMAGE))
  assert all(v == n.startswith("image_") for n, v in mask.items())
  assert not any(jax.tree.leaves(warm_start.frozen_mask(params[0], ())))
  with pytest.raises(ValueError, match=r"config.optim.freeze: pattern\(s\) \['/image_tower/.*'\]"):
    warm_start.frozen_mask(params[0], ("/image_tower/.*",))


def test_frozen_params_get_no_update_decay_or_moments(params):
  config = tiny_config(**{"optim.freeze": IMAGE, "optim.warmup_steps": 0,
                          "optim.weight_decay": 0.1, "optim.clip_norm": 1.0})
  tx, _ = state_lib.optimizer(config)
  p = jax.tree.map(jnp.asarray, params[0])
  opt_state = tx.init(p)
  moments = [n for n in warm_start.named_leaves(opt_state) if "image_" in n]
  assert not moments, moments  # no Adam mu/nu for the locked tower
  assert any("text_tower" in n for n in warm_start.named_leaves(opt_state))

  @jax.jit
  def update(grads):
    updates, _ = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), updates

  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), p)
  zero = jax.tree.map(jnp.zeros_like, p)
  mask = warm_start.named_leaves(warm_start.frozen_mask(p, IMAGE))
  for g in (grads, zero):  # zero gradients: only weight decay moves params
    new, _ = update(g)
    for name, leaf in warm_start.named_leaves(new).items():
      before = np.asarray(warm_start.named_leaves(p)[name])
      if mask[name]:
        np.testing.assert_array_equal(np.asarray(leaf), before, err_msg=name)
      elif g is grads or (leaf.ndim >= 2 and np.any(before)):
        assert not np.array_equal(np.asarray(leaf), before), name

  # The clipping norm is over trainable gradients: huge frozen ones change nothing.
  huge = {**grads, "image_tower": jax.tree.map(lambda x: x * 1e6, grads["image_tower"])}
  _, a = update(grads)
  _, b = update(huge)
  _assert_same(a, b)


def test_nothing_frozen_keeps_the_plain_optimizer_state(params):
  """No multi_transform wrapper when optim.freeze is empty: checkpoints written
  before freezing existed restore unchanged."""
  opt_state = jax.eval_shape(state_lib.optimizer(tiny_config())[0].init, params[0])
  assert not isinstance(opt_state, optax.MultiTransformState)
  adam = opt_state[1][0]
  assert jax.tree.structure(adam.mu) == jax.tree.structure(params[0])


def test_lit_trains_the_text_tower_against_the_locked_image_tower(tok, runs, params,
                                                                   tmp_path):
  """Warm start and lock the image tower from a source run, then two sharded
  steps (fsdp=2, so copied params are placed as shards) and a checkpoint round
  trip of the frozen optimizer state."""
  config = tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2, "optim.freeze": IMAGE,
                          "init.include": IMAGE, "init.checkpoint": runs["plain"],
                          "total_steps": 2})
  terms = build.check(config)
  mesh = build.mesh(config)
  model = build.model(config, tok)
  mask = build.freeze_mask(config, model, mesh)  # one mask for optimizer and step
  tx, lr = state_lib.optimizer(config, mask)
  shardings = build.state_shardings(config, model, tx, mesh)
  state = build.init_state(config, model, tx, shardings)
  fresh = jax.device_get(state.params)
  assert warm_start.named_leaves(mask) == warm_start.named_leaves(
      warm_start.frozen_mask(fresh, IMAGE))
  state = state.replace(params=warm_start.apply(config, state.params))
  assert jax.tree.map(lambda x: x.sharding, state.params) == shardings.params
  step = build.train_step(config, model, tx, lr, build.loss_fn(config, terms, mesh), mesh,
                          shardings, frozen_mask=mask)
  make = pipeline.batch_maker(config, tok)
  with partitioning.activate(mesh):
    step = step.lower(state, make(0), {}).compile()  # compiled once: run and measured
    for s in range(2):
      state, metrics = step(state, make(s), {})
  assert np.isfinite(float(metrics["train/loss"]))
  # The locked tower's backward pass is not computed at all.
  unlocked = build.train_step(tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2}), model, tx,
                              lr, build.loss_fn(config, terms, mesh), mesh, shardings)
  with partitioning.activate(mesh):
    flops = [perf.compiled_flops(step),
             perf.compiled_flops(unlocked.lower(state, make(0), {}).compile())]
  assert flops[0] < 0.9 * flops[1], flops
  trained = jax.device_get(state.params)
  for name in ("image_tower", "image_proj"):  # the source run's, bitwise
    _assert_same(trained[name], params[1][name])
  for name in ("text_tower", "text_proj"):
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(trained[name]), jax.tree.leaves(fresh[name]))]
    assert all(changed), name

  # orbax saves and restores the masked optimizer state (no image moments).
  mngr = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
  mngr.save(2, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()
  abstract = partitioning.with_shardings(state, shardings)
  restored = mngr.restore(2, args=ocp.args.StandardRestore(abstract))
  mngr.close()
  _assert_same(restored.opt_state, state.opt_state)
  assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)


# A pretrained text tower (config.init.pretrained_text): LiT with the text side locked.

TINY_BERT = dict(kind="bert", width=16, depth=1, num_heads=2, mlp_dim=32, pool="mean")
BERT_CONFIG = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 16,
               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
               "max_position_embeddings": 64, "hidden_act": "gelu", "pad_token_id": 0}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """A HF BERT directory (config.json + model.safetensors): a small random BERT
  with all-MiniLM-L6-v2's vocabulary and 64 positions."""
  root = tmp_path_factory.mktemp("tiny-bert")
  kwargs = dict(vocab_size=30522, context_length=64, width=16, depth=1, num_heads=2,
                mlp_dim=32)
  # Jitted: eager, each of init's ops would compile on its own.
  boxed = jax.jit(bert.BertEncoder(**kwargs).init)(jax.random.key(3),
                                                   np.zeros((1, 8), np.int32))
  tensors = pretrained.flax_to_hf(jax.device_get(nn.meta.unbox(boxed)["params"]))
  save_file(tensors, str(root / "model.safetensors"))
  (root / "config.json").write_text(json.dumps(BERT_CONFIG))
  return str(root)


def _bert_config(path, **overrides):
  return tiny_config(**{"data.tokenizer": "minilm", "model.towers.text": dict(TINY_BERT),
                        "init.pretrained_text": path, "optim.freeze": ("text_tower/.*",),
                        **overrides})


def _abstract_params(config, vocab_size=None):
  """Shapes of the model's params (nothing allocated); vocab_size: a tokenizer
  of that many ids instead of config.data.tokenizer's."""
  tok = (build.tokenizer(config, "/nonexistent-workdir") if vocab_size is None
         else types.SimpleNamespace(vocab_size=vocab_size, pad_id=0))
  ex = build.example_batch(config, batch_size=1)
  model = build.model(config, tok)
  return state_lib.unbox(jax.eval_shape(model.init, jax.random.key(0), ex))["params"]


def test_pretrained_text_loads_the_converted_weights(tiny_bert, capsys):
  config = _bert_config(tiny_bert)
  model = build.model(config, build.tokenizer(config, "/nonexistent-workdir"))
  fresh = _params(model, 0, config)
  merged = warm_start.apply(config, fresh)
  _, want = pretrained.load_pretrained(tiny_bert, context_length=config.data.context_length)
  _assert_same(merged["text_tower"], want)
  assert np.shape(merged["text_tower"]["embeddings"]["position"]) == (24, 16)
  for name in fresh:
    if name != "text_tower":
      assert all(a is b for a, b in zip(jax.tree.leaves(merged[name]),
                                        jax.tree.leaves(fresh[name])))
  count = sum(np.size(x) for x in jax.tree.leaves(want))
  assert capsys.readouterr().out.strip() == (
      f"pretrained text tower: 17 tensors ({count / 1e6:.1f}M params) from {tiny_bert}")


def test_pretrained_minilm_fills_the_experiments_text_tower():
  """Every name and shape of all-MiniLM-L6-v2 fits the experiment's text tower.
  The params it fills are shapes only (nothing of the 22M-param model is
  initialised); placing copied weights on devices is tested above."""
  config = _bert_config("minilm", **{"model.towers.text": dict(
      kind="bert", width=384, depth=6, num_heads=12, mlp_dim=1536, pool="mean")})
  merged = warm_start.pretrained_text(config, _abstract_params(config))
  _, want = pretrained.load_pretrained(context_length=config.data.context_length)
  _assert_same(merged["text_tower"], want)


def _model_dir(tmp_path, name, config=None, tensors=None):
  root = tmp_path / name
  root.mkdir()
  (root / "config.json").write_text(json.dumps({**BERT_CONFIG, **(config or {})}))
  if tensors is not None:
    save_file(tensors, str(root / "model.safetensors"))
  return str(root)


def test_missing_or_foreign_weights_name_the_path(tiny_bert, tmp_path):
  params = _abstract_params(_bert_config(tiny_bert))
  missing = str(tmp_path / "no-such-bert")
  with pytest.raises(FileNotFoundError, match=(
      rf"config.init.pretrained_text='{missing}': no pretrained BERT directory at "
      rf"{missing}; give a directory with config.json and model.safetensors")):
    warm_start.apply(_bert_config(missing), params)
  no_weights = _model_dir(tmp_path, "config-only")
  with pytest.raises(FileNotFoundError, match=rf"no weights at {no_weights}/model.safetensors"):
    warm_start.apply(_bert_config(no_weights), params)
  gpt2 = {"wte.weight": np.zeros((16, 8), np.float32)}
  path = _model_dir(tmp_path, "gpt2", config={"model_type": "gpt2"}, tensors=gpt2)
  with pytest.raises(ValueError, match=(rf"config.init.pretrained_text='{path}': "
                                        rf"{path}/config.json: model_type='gpt2'; "
                                        "expected 'bert'")):
    warm_start.apply(_bert_config(path), params)
  path = _model_dir(tmp_path, "gpt2-weights", tensors=gpt2)
  with pytest.raises(ValueError, match=rf"{path}/model.safetensors is not a BERT checkpoint"):
    warm_start.apply(_bert_config(path), params)


@pytest.mark.parametrize("overrides,vocab,match", [
    ({"model.towers.text.width": 32}, None,
     r"config.model.towers.text is not the BERT of .*: width=32 here, 16 there; set "
     r"--config.model.towers.text.width=16\."),
    ({"model.towers.text.depth": 2, "model.towers.text.mlp_dim": None}, None,
     r"depth=2 here, 1 there, mlp_dim=64 here, 32 there; set "
     r"--config.model.towers.text.depth=1 --config.model.towers.text.mlp_dim=32\."),
    ({"data.context_length": 80}, None,
     r"config.data.context_length=80 but .* has position embeddings for 64 tokens"),
    ({"data.tokenizer": "/runs/x/shapes_sp256.model"}, 256,
     r"the tokenizer \(config.data.tokenizer='/runs/x/shapes_sp256.model'\) has 256 ids but "
     r".* embeds 30522; set --config.data.tokenizer"),
    ({"model.towers.text.pool": "pooler"}, None, r"model.safetensors has no pooler.dense weights; "
                                          r"use pool='mean' or 'first'"),
])
def test_a_text_tower_that_differs_says_what_to_set(tiny_bert, overrides, vocab, match):
  config = _bert_config(tiny_bert, **overrides)
  with pytest.raises(ValueError, match=match):
    warm_start.pretrained_text(config, _abstract_params(config, vocab))


def test_pretrained_text_config_is_validated():
  configs.validate(_bert_config("/not/read/yet"))  # the path is checked when read
  with pytest.raises(configs.ConfigError, match=r"loads a BERT text tower but "
                                                r"config.model.towers.text.kind='transformer'"):
    configs.validate(tiny_config(**{"init.pretrained_text": "minilm",
                                    "data.tokenizer": "minilm"}))
  with pytest.raises(configs.ConfigError, match=r"config.data.tokenizer is empty .* "
                                                r"--config.data.tokenizer=minilm"):
    configs.validate(_bert_config("minilm", **{"data.tokenizer": ""}))
  with pytest.raises(configs.ConfigError, match=r"config.init.pretrained_text=None must be"):
    configs.validate(_bert_config(None))
  config = tiny_config(**{"init.pretrained_text": "minilm"})  # not validated first
  with pytest.raises(ValueError, match="needs a BERT text tower: set "
                                       "--config.model.towers.text.kind=bert"):
    warm_start.pretrained_text(config, {})


def test_locked_pretrained_text_tower_is_unchanged_by_training(tiny_bert, tmp_path):
  """A few sharded steps of LiT with the text side locked: the text tower is
  bitwise the converted checkpoint, everything else trained; the run then
  evaluates held-out phrasings through mmjax.evaluate's path."""
  from mmjax import evaluate  # pylint: disable=g-import-not-at-top
  from mmjax.train import loop  # pylint: disable=g-import-not-at-top

  config = _bert_config(tiny_bert, **{"total_steps": 3, "eval_every": 0,
                                      "checkpoint_every": 0, "mesh.fsdp": 2})
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(config, workdir)
  assert np.isfinite(result["image_to_text_R@1"])
  trained = warm_start.load_params(workdir)
  _, want = pretrained.load_pretrained(tiny_bert, context_length=config.data.context_length)
  _assert_same(trained["text_tower"], want)
  model = build.model(config, build.tokenizer(config, workdir))
  fresh = jax.device_get(_params(model, config.seed, config))
  for name in ("image_tower", "image_proj", "text_proj"):
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(trained[name]), jax.tree.leaves(fresh[name]))]
    assert all(changed), name

  with config.unlocked():
    config.eval.evaluators.heldout.every = -1
  again = evaluate.evaluate_workdir(config, workdir)
  assert again["step"] == 3
  assert again["image_to_text_R@1"] == result["image_to_text_R@1"]
  assert {"heldout/image_to_text_R@1", "heldout/text_to_image_R@1",
          "heldout/truncated"} <= set(again)
  assert again["heldout/truncated"] == 0.0
