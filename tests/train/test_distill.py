"""Distillation from a frozen teacher run (mmjax/train/teacher.py) on tiny shapes models.

One teacher run (2 steps, wider and with 16-d embeddings) serves every test;
the students are the 8-d tiny model unless a test needs the teacher's own.
Compiles are most of the time here: the KL + MSE student on the (4, 2, 1) mesh
is one program, shared by the step-level tests and the distilled run.
"""

import json
import os
import shutil
import subprocess
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from mmjax import configs, evaluate, losses
from mmjax.data import pipeline
from mmjax.parallel import partitioning
from mmjax.train import build, checkpoint, loop, warm_start
from mmjax.train import state as state_lib
from mmjax.train import step as step_lib
from mmjax.train import teacher as teacher_lib

from tests.train.conftest import tiny_config

# matmul_rate_once: the loop runs three times here.
pytestmark = [pytest.mark.slow,  # trains teachers and students
              pytest.mark.usefixtures("matmul_rate_once")]

TEACHER_MODEL = {
    "model.towers.image": dict(kind="vit", patch_size=8, width=32, depth=1, num_heads=2,
                               pool="gap"),
    "model.towers.text": dict(kind="transformer", width=32, depth=1, num_heads=2, causal=True,
                              pool="eos"),
    "model.embed_dim": 16,
}
KL = {"kl_alignment": 1.0}
KL_MSE = {"kl_alignment": 1.0, "mse_to_teacher": 1.0}


def teacher_config(**overrides):
  # Not evaluated: the tests read its checkpoint, config and tokenizer only.
  return tiny_config(**{**TEACHER_MODEL, "total_steps": 2, "checkpoint_every": 2,
                        "eval_every": 0, "eval.evaluators.retrieval.every": None,
                        **overrides})


def student_config(teacher, terms=KL_MSE, **overrides):
  """The tiny 8-d student of `teacher`, with a map into its 16-d space when a
  term compares embeddings."""
  mse = "mse_to_teacher" in terms
  config = tiny_config(**{"total_steps": 4, "checkpoint_every": 2, "eval_every": 0,
                          "distill.teacher": teacher,
                          "distill.projection_dim": 16 if mse else 0, **overrides})
  config.loss.terms = dict(terms)
  return config


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _host(tree):
  return jax.tree.map(lambda x: np.array(x), jax.device_get(tree))


def _assert_same(a, b):
  a, b = warm_start.named_leaves(a), warm_start.named_leaves(b)
  assert list(a) == list(b)
  for name in a:
    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher"))
  loop.train_and_evaluate(teacher_config(), workdir)
  return workdir


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return build.tokenizer(tiny_config(), str(tmp_path_factory.mktemp("tokenizer")))


def _setup(config, tok):
  """Everything a step needs, as the loop builds it: a fresh state (warm-started
  if the config says so; steps donate it), teacher, jitted step, batches."""
  terms = build.check(config)
  mesh = build.mesh(config)
  model = build.model(config, tok)
  teacher = teacher_lib.load(config, terms, mesh, tok)
  mask = build.freeze_mask(config, model, mesh)
  tx, lr = state_lib.optimizer(config, mask)
  shardings = build.state_shardings(config, model, tx, mesh)

  def fresh():
    state = build.init_state(config, model, tx, shardings)
    return state.replace(params=warm_start.apply(config, state.params))

  frozen = {} if teacher is None else {"teacher": (teacher.outputs, teacher.shardings)}
  frozen_params = {} if teacher is None else {"teacher": teacher.params}
  step = build.train_step(config, model, tx, lr, build.loss_fn(config, terms, mesh), mesh,
                          shardings, frozen_mask=mask, frozen_models=frozen)
  make = pipeline.batch_maker(config, tok)

  def run(state, s):
    with partitioning.activate(mesh):
      return step(state, make(s), frozen_params)

  return SimpleNamespace(config=config, terms=terms, mesh=mesh, model=model, tx=tx,
                         teacher=teacher, fresh=fresh, run=run, make=make)


# The KL + MSE student's params and teacher split over fsdp=2: the step-level
# tests and the distilled run below (the same compiled step).
SHARDED = {"mesh.data": 4, "mesh.fsdp": 2}


@pytest.fixture(scope="module")
def sharded(teacher_dir, tok):
  """A KL + MSE student whose params and teacher are split over fsdp=2."""
  return _setup(student_config(teacher_dir, **SHARDED), tok)


# The teacher is read once and never changes.

def test_teacher_params_are_sharded_like_the_student_and_never_change(sharded, teacher_dir):
  teacher = sharded.teacher
  assert teacher.step == 2 and teacher.config.model.embed_dim == 16
  assert jax.tree.map(lambda x: x.sharding, teacher.params) == teacher.shardings
  specs = [s.spec for s in jax.tree.leaves(teacher.shardings)]
  assert any("fsdp" in jax.tree.leaves(tuple(spec)) for spec in specs), specs
  on_disk = warm_start.load_params(teacher_dir)
  _assert_same(_host(teacher.params), on_disk)

  state = sharded.fresh()
  before = _host(state.params)
  for s in range(3):
    state, metrics = sharded.run(state, s)
  for name in ("kl_alignment", "mse_to_teacher", "sigmoid_contrastive"):
    assert 0 < float(metrics[f"train/loss/{name}"]) < np.inf, name
  _assert_same(_host(teacher.params), on_disk)  # not donated, not updated
  after = _host(state.params)
  assert after["to_teacher"].shape == (8, 16)  # the student's map, trained
  assert not np.array_equal(after["to_teacher"], before["to_teacher"])
  moments = [n for n in warm_start.named_leaves(state.opt_state) if n.endswith("to_teacher")]
  assert len(moments) == 2, moments  # Adam's mu and nu: it is an ordinary param


def test_no_gradient_reaches_the_teacher(sharded):
  """d loss / d teacher params is exactly zero; without stop_gradient it would not be."""
  teacher, model = sharded.teacher, sharded.model
  batch = jax.tree.map(jnp.asarray, sharded.make(0))
  student = jax.jit(model.apply)({"params": sharded.fresh().params}, batch)
  loss_fn = losses.combine(sharded.terms)

  def loss_of(teacher_params, outputs_fn):
    t = outputs_fn(teacher_params, batch)
    return loss_fn({**student, **t}, batch)[0]

  grads = jax.jit(jax.grad(loss_of), static_argnums=1)(teacher.params, teacher.outputs)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))

  def unstopped(teacher_params, batch):  # the same outputs, differentiable
    out = teacher.model.apply({"params": teacher_params}, batch)
    return {"teacher/z/image": out["z/image"], "teacher/z/text": out["z/text"],
            "teacher/temperature": jnp.asarray(teacher.temperature, jnp.float32)}

  stopped = jax.jit(teacher.outputs)(teacher.params, batch)
  free = jax.jit(unstopped)(teacher.params, batch)
  assert sorted(stopped) == sorted(free) == [
      "teacher/temperature", "teacher/z/image", "teacher/z/text"]
  for key in stopped:  # same values...
    np.testing.assert_array_equal(stopped[key], free[key], err_msg=key)
  leaked = jax.jit(jax.grad(loss_of), static_argnums=1)(teacher.params, unstopped)
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(leaked))  # ...other grads


def test_a_zero_distill_weight_trains_as_without_a_teacher(teacher_dir, tok):
  """kl_alignment at weight 0 with the teacher loaded and passed to the step: the
  update equals the one of the same student without a teacher, bitwise."""
  with_teacher = _setup(student_config(teacher_dir, {"kl_alignment": 0.0}), tok)
  without = _setup(student_config("", {}), tok)
  assert with_teacher.teacher is not None and without.teacher is None
  a, ma = with_teacher.run(with_teacher.fresh(), 0)
  b, mb = without.run(without.fresh(), 0)
  assert float(ma["train/grad_norm"]) == float(mb["train/grad_norm"])
  _assert_same(_host(a.params), _host(b.params))
  # The comparison can fail: a positive weight changes the update.
  weighted = _setup(student_config(teacher_dir, KL), tok)
  _, mc = weighted.run(weighted.fresh(), 0)
  assert float(mc["train/grad_norm"]) != float(mb["train/grad_norm"])


def test_kl_and_mse_are_zero_when_the_student_is_the_teacher(teacher_dir, tok):
  """Same architecture, params warm-started from the teacher's checkpoint.

  Exactly zero when the teacher's outputs are the student's own; to float32
  rounding when the teacher runs its own forward pass in the same program:
  XLA fuses the two passes differently (the student's feeds more terms, and in
  the train step it is differentiated), so their last bits may differ
  (measured: |KL| < 5e-8, MSE < 1e-15).
  """
  config = student_config(teacher_dir, {**KL_MSE}, **TEACHER_MODEL,
                          **{"distill.projection_dim": 0, "init.checkpoint": teacher_dir})
  same = _setup(config, tok)
  state = same.fresh()
  _assert_same(_host(state.params), _host(same.teacher.params))
  batch = jax.tree.map(jnp.asarray, same.make(0))
  loss_fn = losses.combine(same.terms)
  temperature = same.teacher.temperature

  @jax.jit
  def distill_terms(params, teacher_params):
    out = same.model.apply({"params": params}, batch)
    own = {"teacher/z/image": out["z/image"], "teacher/z/text": out["z/text"],
           "teacher/temperature": jnp.asarray(temperature, jnp.float32)}
    teacher = same.teacher.outputs(teacher_params, batch)
    return loss_fn({**out, **own}, batch)[1], loss_fn({**out, **teacher}, batch)[1]

  own, taught = distill_terms(state.params, same.teacher.params)
  assert float(own["kl_alignment"]) == 0.0 and float(own["mse_to_teacher"]) == 0.0
  _, metrics = same.run(state, 0)  # the loss of the params before the update
  for terms in (taught, {k[len("train/loss/"):]: v for k, v in metrics.items()
                         if k.startswith("train/loss/")}):
    assert abs(float(terms["kl_alignment"])) < 1e-6  # rounding may go below 0
    assert 0 <= float(terms["mse_to_teacher"]) < 1e-9
    np.testing.assert_allclose(terms["sigmoid_contrastive"], own["sigmoid_contrastive"],
                               rtol=1e-6)
  # A student that is not the teacher is far from zero (the bounds above bite).
  other = _setup(student_config(teacher_dir, {**KL_MSE}, **TEACHER_MODEL,
                                **{"distill.projection_dim": 0}), tok)
  _, metrics = other.run(other.fresh(), 0)
  assert float(metrics["train/loss/kl_alignment"]) > 1e-3
  assert float(metrics["train/loss/mse_to_teacher"]) > 1e-2


def test_accumulated_microbatches_see_the_teacher_on_the_same_rows(sharded):
  """mse_to_teacher is a mean over examples, so k = 2 microbatches must give the
  loss and update of one batch, unless the teacher scores other rows."""
  teacher = sharded.teacher
  loss = losses.combine({"mse_to_teacher": 1.0})
  batch = jax.tree.map(jnp.asarray, sharded.make(1))
  results = []
  state = sharded.fresh()
  for k in (1, 2):
    step = jax.jit(step_lib.make_train_step(
        sharded.model, sharded.tx, loss, lambda s: 1e-3, k,
        frozen_models={"teacher": teacher.outputs}))
    results.append(step(state, batch, {"teacher": teacher.params}))
  (s1, m1), (s2, m2) = results
  np.testing.assert_allclose(m1["train/loss"], m2["train/loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(_host(s1.params)), jax.tree.leaves(_host(s2.params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# Bad teachers fail before compiling, naming the path and what to change.

def _load(config, tok):
  terms = build.check(config)
  return teacher_lib.load(config, terms, build.mesh(config), tok)


def test_a_teacher_without_checkpoint_or_config_is_refused(teacher_dir, tok, tmp_path):
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  shutil.copy(os.path.join(teacher_dir, "config.json"), no_ckpt)
  with pytest.raises(FileNotFoundError, match=(
      rf"teacher: no checkpoint in {no_ckpt}\. config.distill.teacher='{no_ckpt}' must "
      r"be a run that has saved a checkpoint")):
    _load(student_config(str(no_ckpt)), tok)

  no_config = tmp_path / "no_config"
  shutil.copytree(os.path.join(teacher_dir, "checkpoints"), no_config / "checkpoints")
  with pytest.raises(FileNotFoundError, match=(
      rf"config.distill.teacher='{no_config}' has no config.json \({no_config}/config.json\)")):
    _load(student_config(str(no_config)), tok)

  with pytest.raises(FileNotFoundError, match=r"config.distill.teacher='/no/such/run' does "
                                              r"not exist"):
    _load(student_config("/no/such/run"), tok)


def test_other_embedding_size_needs_a_projection_for_mse(teacher_dir, tok):
  with pytest.raises(teacher_lib.TeacherError, match=(
      r"loss term\(s\) \['mse_to_teacher'\] compare .* the teacher .* has "
      r"model.embed_dim=16 and this run model.embed_dim=8; set "
      r"--config.distill.projection_dim=16")):
    _load(student_config(teacher_dir, **{"distill.projection_dim": 0}), tok)
  with pytest.raises(teacher_lib.TeacherError,
                     match=r"projection_dim=12 but the teacher .* model.embed_dim=16"):
    _load(student_config(teacher_dir, **{"distill.projection_dim": 12}), tok)
  # KL compares similarity matrices, which have the batch's size whatever D is.
  assert _load(student_config(teacher_dir, KL), tok).config.model.embed_dim == 16


def test_a_teacher_without_a_tower_a_term_compares_is_refused(teacher_dir, tok):
  """A three-tower student distilling its sketch-text similarities from an
  image-text teacher: the teacher has no sketch tower to score them."""
  terms = {"kl_sketch": dict(fn="kl_alignment", pair=("sketch", "text"))}
  config = student_config(teacher_dir, terms, **{"data.fields": ("sketch",)})
  config.model.towers.sketch = dict(kind="cnn", input="sketch", widths=(8,),
                                    blocks_per_stage=1)
  assert build.check(config)["kl_sketch"].pair == ("sketch", "text")
  with pytest.raises(teacher_lib.TeacherError, match=(
      rf"loss terms \['kl_sketch'\] compare with the teacher over modalities \['sketch'\], "
      rf"but the teacher {teacher_dir} has towers \['image', 'text'\]; choose a teacher "
      r"with those towers, or change the terms' pairs")):
    _load(config, tok)


@pytest.mark.parametrize("key,value", [("data.image_size", 32),
                                       ("data.context_length", 16),
                                       ("data.vocab_size", 128)])
def test_a_teacher_that_reads_other_batches_is_refused(teacher_dir, tok, key, value):
  leaf = key.split(".")[1]
  theirs = tiny_config()["data"][leaf]
  with pytest.raises(teacher_lib.TeacherError, match=(
      rf"teacher {teacher_dir} was trained with {key}={theirs} but this run has "
      rf"{key}={value}; .* --config.{key}={theirs}")):
    _load(student_config(teacher_dir, KL, **{key: value}), tok)


def test_shapes_tokenizers_are_deterministic_and_compared(teacher_dir, tok, tmp_path):
  """The same vocab_size trains the same tokenizer bytes (so equal settings mean
  equal token ids), and a teacher whose tokenizer file differs anyway is refused."""
  theirs = os.path.join(teacher_dir, "tokenizer", os.path.basename(tok.path))
  with open(theirs, "rb") as a, open(tok.path, "rb") as b:
    assert a.read() == b.read()
  other = build.tokenizer(tiny_config(**{"data.vocab_size": 128}), str(tmp_path / "t128"))
  fake = tmp_path / "fake"
  (fake / "tokenizer").mkdir(parents=True)
  for name in ("config.json", "checkpoints"):
    os.symlink(os.path.join(teacher_dir, name), fake / name)
  shutil.copy(other.path, fake / "tokenizer" / os.path.basename(tok.path))
  with pytest.raises(teacher_lib.TeacherError, match=r"tokenizes with .*shapes_sp256.model, "
                                                     r"whose vocabulary differs"):
    _load(student_config(str(fake), KL), tok)


def test_the_loop_refuses_a_bad_teacher_before_compiling(teacher_dir, tmp_path):
  workdir = str(tmp_path / "student")
  with pytest.raises(teacher_lib.TeacherError, match=r"data.image_size"):
    loop.train_and_evaluate(student_config(teacher_dir, KL, **{"data.image_size": 32}),
                            workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))


@pytest.mark.parametrize("key,value,match", [
    ("distill.temperature", 0.0, r"config.distill.temperature=0.0 must be a positive"),
    ("distill.temperature", float("nan"), r"config.distill.temperature=nan"),
    ("distill.projection_dim", -1, r"config.distill.projection_dim=-1 must be"),
])
def test_bad_distill_values_name_the_key(key, value, match):
  with pytest.raises(configs.ConfigError, match=match):
    configs.validate(tiny_config(**{key: value}))


def test_an_unset_teacher_placeholder_validates_but_does_not_train(tok):
  """experiments/shapes_distill.py leaves distill.teacher a placeholder (None):
  the config checks, and evaluation needs no teacher, but training names the key."""
  config = student_config(None, KL)
  terms = build.check(config)
  assert {tid: (t.fn_name, t.weight, t.pair) for tid, t in terms.items()} == {
      "sigmoid_contrastive": ("sigmoid_contrastive", 1.0, ("image", "text")),
      "kl_alignment": ("kl_alignment", 1.0, ("image", "text"))}
  with pytest.raises(ValueError, match=r"config.distill.teacher is required by this "
                                       r"experiment"):
    teacher_lib.load(config, build.check(config), build.mesh(config), tok)


@pytest.mark.parametrize("term,reads", [("kl_alignment", "teacher_logits"),
                                        ("mse_to_teacher", "teacher_zimg")])
def test_a_teacher_term_without_a_teacher_names_the_key(term, reads):
  with pytest.raises(losses.LossConfigError, match=(
      rf"loss term '{term}' \({term}\) reads '{reads}', which needs a teacher: set "
      r"config.distill.teacher to the workdir of a finished run")):
    build.check(student_config("", {term: 1.0}))


# A distilled run: checkpoints, resume, evaluation.

@pytest.fixture(scope="module")
def distilled(teacher_dir, tmp_path_factory):
  """Four KL + MSE steps on the (4, 2, 1) mesh, checkpoints at 2 and 4."""
  workdir = str(tmp_path_factory.mktemp("distilled"))
  result = loop.train_and_evaluate(student_config(teacher_dir, **SHARDED), workdir)
  return workdir, result


def test_checkpoints_hold_the_student_alone(distilled, tok):
  workdir, _ = distilled
  step_dir = epath.Path(workdir) / "checkpoints" / "4"
  assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["config", "data",
                                                                       "state"]
  saved = ocp.PyTreeCheckpointHandler().metadata(step_dir / "state").tree
  assert sorted(saved) == ["opt_state", "params", "skipped", "step"]
  config = student_config("unused")
  model = build.model(config, tok)
  student, _ = build.param_layout(config, model, build.mesh(config))
  shapes = lambda tree: {n: tuple(x.shape) for n, x in warm_start.named_leaves(tree).items()}
  assert shapes(saved["params"]) == shapes(student)  # the 8-d student and its map
  assert shapes(saved["params"])["to_teacher"] == (8, 16)
  # Nothing of the teacher's width (32) anywhere in the state, optimizer included.
  widths = {d for leaf in warm_start.named_leaves(saved).values()
            for d in getattr(leaf, "shape", ())}
  assert 32 not in widths


def test_a_distilled_run_resumes_on_the_same_curve(distilled, teacher_dir, tmp_path,
                                                   monkeypatch):
  workdir, result = distilled
  resumed = str(tmp_path / "resumed")
  os.makedirs(os.path.join(resumed, "checkpoints"))
  subprocess.run(["cp", "-r", os.path.join(workdir, "checkpoints", "2"),
                  os.path.join(resumed, "checkpoints")], check=True)
  # The student's checkpoint pins the teacher step it was trained against, and
  # the resume asks the teacher for that step (not the teacher run's latest).
  saved = checkpoint.latest_data(checkpoint.manager(resumed, read_only=True))
  teacher_steps = checkpoint.manager(teacher_dir, read_only=True).all_steps()
  assert saved["pins"]["teacher_step"] == max(teacher_steps)
  asked = []
  real_load = teacher_lib.load

  def load(*args, step=None, **kwargs):
    asked.append(step)
    return real_load(*args, step=step, **kwargs)

  monkeypatch.setattr(teacher_lib, "load", load)
  again = loop.train_and_evaluate(student_config(teacher_dir, **SHARDED), resumed)
  assert asked == [max(teacher_steps)]
  original = {r["step"]: r for r in _rows(workdir) if "train/loss" in r}
  rows = {r["step"]: r for r in _rows(resumed) if "train/loss" in r}
  assert sorted(rows) == [4]  # it started at step 3
  for key in ("train/loss", "train/loss/kl_alignment", "train/loss/mse_to_teacher"):
    assert rows[4][key] == pytest.approx(original[4][key], rel=1e-6), key
  for key in ("image_to_text_R@1", "text_to_image_R@5", "text_to_image_mean_rank"):
    assert again[key] == pytest.approx(result[key], abs=1e-6)


def test_evaluate_reads_a_distilled_student_without_its_teacher(distilled, tmp_path):
  workdir, result = distilled
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  # The teacher is not read: the student's checkpoint and config are enough.
  out = evaluate.evaluate_workdir(student_config("/teacher/moved/away", **SHARDED), copy)
  assert out["step"] == 4
  for key in ("image_to_text_R@1", "text_to_image_R@1", "text_to_image_mean_rank"):
    assert out[key] == pytest.approx(result[key], abs=1e-6)
