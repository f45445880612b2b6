"""Sharded training on 8 simulated devices gives the loss curve of one device.

One compiled step per mesh (module-scoped, cached), driven by a plain loop over
the same 20 global batches; the reference is a mesh of jax.devices()[:1]. The
same holds for a multi-task model: three towers (image, text and audio, the
audio read as log-mel computed inside the step), contrastive terms over three
pairs, a matching head on in-batch hard negatives and a caption decoder with
CapPa's randomly masked examples, under learned (uncertainty) task weights.
"""

import os
import sys
import tempfile

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmjax.data import pipeline
from mmjax.eval import evaluators
from mmjax.losses import captioning
from mmjax.models import generate
from mmjax.parallel import multihost, partitioning
from mmjax.train import build, checkpoint
from mmjax.train import state as state_lib

from tests.train.conftest import tiny_config

pytestmark = pytest.mark.slow  # compiles one train step per mesh

STEPS, BATCH = 20, 16
# Every mesh here is needed by another test below too (ring loss, FSDP,
# tensor parallelism, checkpoint and evaluation layouts), so the curve check
# costs no compile of its own. (4, 2, 1), data and fsdp without tensor, is
# left out: (2, 2, 2) splits the batch over data and fsdp the same way (plus
# tensor), and (4, 2, 1) still trains below, in the gradient accumulation test.
MESHES = [(8, 1, 1), (2, 2, 2), (1, 8, 1)]
ONE_DEVICE = None


def _config(mesh=(-1, 1, 1), **overrides):
  data, fsdp, tensor = mesh
  return tiny_config(batch_size=BATCH, total_steps=STEPS, **{
      "mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor, **overrides})


class Run:
  """A trained state, its mesh and compiled step, and the per-step losses,
  gradient norms and (unweighted) loss terms."""

  def __init__(self, config, tok, batches, devices=None):
    terms = build.check(config)
    self.mesh = build.mesh(config, devices)
    self.model = build.model(config, tok)
    tx, lr = state_lib.optimizer(config)
    self.shardings = build.state_shardings(config, self.model, tx, self.mesh)
    state = build.init_state(config, self.model, tx, self.shardings)
    step = build.train_step(config, self.model, tx, lr,
                            build.loss_fn(config, terms, self.mesh), self.mesh,
                            self.shardings)
    batch_sharding = partitioning.batch_sharding(self.mesh)
    rows = multihost.process_rows(batch_sharding, BATCH)
    with partitioning.activate(self.mesh):
      self.compiled = step.lower(state, batches[0], {}).compile()
    self.terms = terms
    history = []
    for global_rows in batches:
      local = {k: v[rows] for k, v in global_rows.items()}
      state, metrics = self.compiled(
          state, multihost.global_batch(local, batch_sharding, BATCH), {})
      history.append(metrics)
    history = jax.device_get(history)
    self.state = state
    self.losses = np.asarray([m["train/loss"] for m in history])
    self.grad_norms = np.asarray([m["train/grad_norm"] for m in history])
    self.term_losses = {t: np.asarray([m[f"train/loss/{t}"] for m in history])
                        for t in terms}
    self.history = {k: np.asarray([m[k] for m in history]) for k in history[0]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return build.tokenizer(_config(), str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def batches(tok):
  config = _config()
  make = pipeline.batch_maker(config, tok)
  return [make(s) for s in range(STEPS)]


def _with_stderr(fn):
  """(fn(), what was written to file descriptor 2 meanwhile, XLA's C++
  warnings included), the text also passed on to stderr."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as f:
    os.dup2(f.fileno(), 2)
    try:
      out = fn()
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
    f.seek(0)
    text = f.read().decode(errors="replace")
  sys.stderr.write(text)
  return out, text


@pytest.fixture(scope="module")
def runs(tok, batches):
  """get(mesh, steps=STEPS, **overrides): the Run, built once; its
  compile_log is what the build (the compile included) wrote to stderr."""
  cache = {}

  def get(mesh, steps=STEPS, **overrides):
    key = (mesh, steps, tuple(sorted(overrides.items())))
    if key not in cache:
      devices = jax.devices()[:1] if mesh is ONE_DEVICE else None
      config = _config((-1, 1, 1) if mesh is ONE_DEVICE else mesh, **overrides)
      cache[key], log = _with_stderr(lambda: Run(config, tok, batches[:steps], devices))
      cache[key].compile_log = log
    return cache[key]

  return get


def test_one_device_reference_learns(runs):
  ref = runs(ONE_DEVICE)
  assert ref.mesh.devices.size == 1
  assert np.isfinite(ref.losses).all()
  assert ref.losses[-5:].mean() < ref.losses[:5].mean()


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_same_loss_curve_as_one_device(runs, mesh):
  run = runs(mesh)
  assert tuple(run.mesh.shape.values()) == mesh
  np.testing.assert_allclose(run.losses, runs(ONE_DEVICE).losses, rtol=1e-4)
  np.testing.assert_allclose(run.grad_norms, runs(ONE_DEVICE).grad_norms, rtol=1e-4)


def _leaf(tree, *path):
  for key in path:
    tree = tree[key]
  return tree


FC1 = ("text_tower", "encoder", "block0", "mlp", "fc1", "kernel")
QKV = ("image_tower", "encoder", "block0", "attn", "qkv", "kernel")


def test_fsdp_shards_params_and_optimizer_moments(runs):
  state = runs((1, 8, 1)).state
  kernel = _leaf(state.params, *FC1)  # [embed 16, mlp 64]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in kernel.addressable_shards} == {(2, 64)}
  adam = state.opt_state[1][0]
  mu = _leaf(adam.mu, *FC1)
  assert mu.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in mu.addressable_shards} == {(2, 64)}
  assert state.step.sharding.is_fully_replicated


def test_tensor_parallel_splits_heads_and_mlp(runs):
  state = runs((2, 2, 2)).state
  qkv = _leaf(state.params, *QKV)  # [embed 16, 3, heads 2, kv 8]
  assert qkv.sharding.spec == P("fsdp", None, "tensor", None)
  assert {s.data.shape for s in qkv.addressable_shards} == {(8, 3, 1, 8)}
  assert {s.data.shape for s in _leaf(state.params, *FC1).addressable_shards} == {(8, 32)}


def test_multi_device_step_uses_the_ring_loss(runs):
  # The sigmoid loss's ring form passes text chunks with collective-permute;
  # the single-device step has no collectives at all.
  assert "collective-permute" in runs((8, 1, 1)).compiled.as_text()
  assert "collective-permute" not in runs(ONE_DEVICE).compiled.as_text()


@pytest.mark.parametrize("mesh", [(1, 8, 1), (2, 2, 2)], ids=["1x8x1", "2x2x2"])
def test_evaluation_with_sharded_params(runs, tok, mesh):
  """The one-device params, placed as `mesh` shards them, embed the same."""
  ref, run = runs(ONE_DEVICE), runs(mesh)
  params = jax.device_get(ref.state.params)
  sharded = jax.device_put(params, run.shardings.params)
  data = pipeline.test_data(_config(), tok)
  expected = evaluators.Encoders(ref.model, params, 20)
  got = evaluators.Encoders(run.model, sharded, 20)
  for modality in ("image", "text"):
    e, g = expected.encode(modality, data[modality]), got.encode(modality, data[modality])
    assert e.shape == g.shape == (len(data[modality]), 8)
    np.testing.assert_allclose(g, e, atol=1e-5)


def test_gradient_accumulation_averages_microbatches(runs):
  """mse_alignment is a mean over examples: two microbatches of 8 on a (4, 2, 1)
  mesh give the curve of one batch of 16 on one device."""
  mse = {"loss.name": "mse_alignment"}
  whole = runs(ONE_DEVICE, steps=4, **mse)
  accum = runs((4, 2, 1), steps=4, **mse, **{"optim.grad_accum_steps": 2})
  np.testing.assert_allclose(accum.losses, whole.losses, rtol=1e-4)


def test_accumulation_and_remat_do_not_depend_on_the_mesh(runs):
  """Contrastive loss in microbatches (ring form inside the scan), remat on:
  the same curve on (2, 2, 2) as on one device without remat."""
  accum = {"optim.grad_accum_steps": 2}
  ref = runs(ONE_DEVICE, steps=4, **accum)
  run = runs((2, 2, 2), steps=4, **accum, **{"model.remat": True})
  np.testing.assert_allclose(run.losses, ref.losses, rtol=1e-4)
  # Microbatches of 8 see fewer negatives than one batch of 16: a different loss.
  assert not np.allclose(ref.losses, runs(ONE_DEVICE).losses[:4], rtol=1e-3)


def test_heads_not_divisible_by_tensor_fall_back_to_replication(runs, caplog):
  """2 heads on tensor=4: those params are replicated, with a warning; the
  MLP and vocabulary still split, and the curve is unchanged."""
  with caplog.at_level("WARNING", logger="mmjax.parallel.partitioning"):
    run = runs((1, 2, 4))
  warned = "\n".join(r.getMessage() for r in caplog.records)
  assert "attn/qkv/kernel (16, 3, 2, 8): dim 2 (heads)" in warned
  assert "'tensor' of size 4" in warned
  assert _leaf(run.state.params, *QKV).sharding.spec == P("fsdp", None, None, None)
  assert _leaf(run.state.params, *FC1).sharding.spec == P("fsdp", "tensor")
  np.testing.assert_allclose(run.losses, runs(ONE_DEVICE).losses, rtol=1e-4)


def test_checkpoint_restores_onto_another_mesh(runs, tmp_path):
  """Saved from (8, 1, 1), restored straight into the (1, 8, 1) layout."""
  source, target = runs((8, 1, 1)), runs((1, 8, 1))
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, STEPS, source.state, {"next_step": STEPS}, {})
  checkpoint.wait(mngr)
  abstract = partitioning.with_shardings(source.state, target.shardings)
  restored = checkpoint.restore_latest(mngr, abstract).state
  kernel = _leaf(restored.params, *FC1)
  assert kernel.sharding == _leaf(target.shardings.params, *FC1)
  np.testing.assert_array_equal(np.asarray(kernel), np.asarray(_leaf(source.state.params, *FC1)))
  assert int(restored.step) == STEPS


def test_no_involuntary_resharding(runs):
  """XLA warns when it can only reach a layout by replicating a whole tensor
  (e.g. a lookup into a width-sharded embedding table); none may occur.

  XLA prints it while compiling, and a program read back from the session's
  persistent compilation cache prints nothing: so it is looked for in what the
  one build of the (2, 2, 2) run wrote (no other test compiles that program,
  so that build compiled it), not in a second build.
  """
  assert "Involuntary full rematerialization" not in runs((2, 2, 2)).compile_log


# A third modality: an audio spectrogram transformer reading the batch field
# "audio" through a log-mel feature stage computed inside the step, with loss
# terms over three pairs (one with a scale and bias of its own).

AUDIO_TOWER = dict(kind="ast", input="audio", frames=98, patch=(14, 8), width=16, depth=1,
                   num_heads=2, features=dict(fn="mmjax.data.audio.log_mel",
                                              sample_rate=16000, n_fft=400, hop_length=160,
                                              n_mels=16, center=False))
THREE_TOWER_TERMS = {
    "audio_text": dict(fn="sigmoid_contrastive", pair=("audio", "text"), weight=0.5),
    "image_audio": dict(fn="softmax_contrastive", pair=("image", "audio"), weight=0.5),
    "itm": dict(fn="binary_cross_entropy", weight=1.0,
                inputs=dict(logits="itm/logits", labels="itm/labels")),
    "caption": captioning.term("caption", weight=2.0),
}
HEADS = {
    "itm": dict(kind="itm", fusion="concat_mlp", options={"hidden": 16}),
    # Half of the examples decoded in parallel (CapPa): the draw comes from
    # the step's rng, which must not depend on the mesh either.
    "caption": dict(kind="caption_decoder", width=16, depth=1, num_heads=2, num_queries=4,
                    parallel_fraction=0.5),
}


def _three_tower_config(mesh=(-1, 1, 1)):
  config = _config(mesh, **{"data.fields": ("audio",)})
  config.model.towers.audio = dict(AUDIO_TOWER)
  config.model.pair_scales = (("audio", "text"),)
  config.model.heads = {k: dict(v) for k, v in HEADS.items()}
  config.loss.terms = {k: dict(v) for k, v in THREE_TOWER_TERMS.items()}
  config.loss.weighting = "uncertainty"
  return config


@pytest.fixture(scope="module")
def three_tower_runs(tok):
  """(one-device run, (4, 2, 1) run) of the image-text-audio model over the
  same batches, which carry the audio field."""
  make = pipeline.batch_maker(_three_tower_config(), tok)
  batches = [make(s) for s in range(STEPS)]
  assert batches[0]["audio"].shape == (BATCH, 16000)
  assert batches[0]["audio"].dtype == np.float32
  ref = Run(_three_tower_config(), tok, batches, jax.devices()[:1])
  run = Run(_three_tower_config((4, 2, 1)), tok, batches)
  return ref, run


def test_three_towers_train_with_terms_over_three_pairs(three_tower_runs):
  ref, run = three_tower_runs
  assert ref.mesh.devices.size == 1 and tuple(run.mesh.shape.values()) == (4, 2, 1)
  assert set(ref.model.towers) == {"image", "text", "audio"}
  assert list(ref.terms)[0] == "sigmoid_contrastive"  # the main term first
  assert set(ref.terms) == {"sigmoid_contrastive", "audio_text", "image_audio", "itm",
                            "caption"}
  assert ref.terms["image_audio"].pair == ("image", "audio")
  # Every tower, projection and the pair's own scale and bias are params, and
  # all of them moved.
  params = jax.device_get(ref.state.params)
  assert {"audio_tower", "audio_proj", "log_scale_audio_text", "bias_audio_text",
          "image_tower", "text_tower", "log_scale", "bias"} <= set(params)
  assert params["audio_proj"]["kernel"].shape == (16, 8)
  for t in ref.terms:
    assert np.isfinite(ref.term_losses[t]).all() and (ref.term_losses[t] > 0).all(), t
  assert {"itm_head", "caption_head", "log_var_caption", "log_var_itm"} <= set(params)
  # The total is the uncertainty-weighted sum: w exp(-s) L + s per term, with
  # each term's log-variance s learned (and moved away from its start at 0).
  s = {tid: ref.history[f"train/log_var/{tid}"] for tid in ref.terms}
  weighted = sum(t.weight * np.exp(-s[tid]) * ref.term_losses[tid] + s[tid]
                 for tid, t in ref.terms.items())
  np.testing.assert_allclose(ref.losses, weighted, rtol=1e-5)
  assert all(abs(s[tid][-1]) > 1e-3 for tid in ref.terms) and (s["caption"][0] == 0)
  for tid in ("sigmoid_contrastive", "caption"):
    assert ref.term_losses[tid][-5:].mean() < ref.term_losses[tid][:5].mean(), tid


def test_three_towers_same_loss_and_grad_norm_as_one_device(three_tower_runs):
  ref, run = three_tower_runs
  np.testing.assert_allclose(run.losses, ref.losses, rtol=1e-4)
  np.testing.assert_allclose(run.grad_norms, ref.grad_norms, rtol=1e-4)
  for t in ref.terms:
    np.testing.assert_allclose(run.term_losses[t], ref.term_losses[t], rtol=1e-4, err_msg=t)
    np.testing.assert_allclose(run.history[f"train/log_var/{t}"],
                               ref.history[f"train/log_var/{t}"], rtol=1e-4, atol=1e-6)
  # The sharded step runs the terms' cross-device forms (the ring passes
  # chunks with collective-permute); the one-device step has no collectives.
  assert "collective-permute" in run.compiled.as_text()
  assert "collective-permute" not in ref.compiled.as_text()


def test_generation_sharded_over_data_equals_one_device(three_tower_runs, tok):
  """Captions of the same params, generated on one device and with the
  images split over the (4, 2, 1) mesh's data axes (params as training
  sharded them), are the same token rows."""
  ref, run = three_tower_runs
  data = pipeline.test_data(_three_tower_config(), tok)
  images = data["image"][:BATCH]
  params = jax.device_put(jax.device_get(ref.state.params), run.shardings.params)
  images_sharded = jax.device_put(images, partitioning.batch_sharding(run.mesh))
  # Beam search: its cache is reordered across beams at every step, the
  # sharded layout's hardest case (greedy is the same loop without it).
  fn = jax.jit(generate.captioner(ref.model, method="beam", beam_size=2))
  one = np.asarray(fn(ref.state.params, images))
  sharded = fn(params, images_sharded)
  assert sharded.sharding.spec[0] is not None  # rows stayed split over devices
  np.testing.assert_array_equal(np.asarray(sharded), one)
