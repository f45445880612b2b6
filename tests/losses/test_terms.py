"""Tests for mmjax.losses.terms: how a term's parameters are bound to pair
outputs, pair scales, batch fields, named inputs and the teacher's outputs;
the distributed forms of a loss named by dotted path; and check()'s messages.

Every array here is a small constant: nothing but the one distributed test
compiles.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import losses
from mmjax.losses import contrastive
from mmjax.losses import registry
from mmjax.losses import sharded
from mmjax.losses import terms as terms_lib

B, D = 8, 4
MODEL = ("z/image", "z/text", "z/sketch", "scale", "bias", "scale/image/sketch",
         "bias/image/sketch")
TEACHER = ("teacher/z/image", "teacher/z/text", "teacher/z/sketch", "teacher/temperature")


def _unit(rng, n=B, d=D):
  z = rng.normal(size=(n, d))
  return jnp.asarray(z / np.linalg.norm(z, axis=-1, keepdims=True), jnp.float32)


@pytest.fixture(scope="module")
def outs():
  """Outputs of a 3-tower model with a pair scale for (image, sketch), and a teacher's."""
  rng = np.random.default_rng(0)
  out = {f"z/{m}": _unit(rng) for m in ("image", "text", "sketch")}
  out.update({f"teacher/z/{m}": _unit(rng, d=6) for m in ("image", "text", "sketch")})
  out.update({"scale": jnp.float32(5.0), "bias": jnp.float32(-2.0),
              "scale/image/sketch": jnp.float32(7.0), "bias/image/sketch": jnp.float32(-3.0),
              "teacher/temperature": jnp.float32(0.5)})
  assert set(out) == set(MODEL) | set(TEACHER)
  return out


def _term(fn, pair=("image", "text"), inputs=None, tid=None, weight=1.0):
  tid = tid or fn.__name__
  return losses.Term(id=tid, fn_name=tid, fn=fn, weight=weight, pair=pair,
                     inputs=inputs or {})


def _one(term, out, batch=None):
  total, per_term = losses.combine({term.id: term})(out, batch)
  np.testing.assert_allclose(total, term.weight * per_term[term.id], rtol=1e-6)
  return per_term[term.id]


# --- binding -----------------------------------------------------------------


def test_pair_binds_its_modalities_as_zimg_and_ztxt(outs):
  seen = {}

  def probe(zimg, ztxt):
    seen["zimg"], seen["ztxt"] = zimg, ztxt
    return jnp.sum(zimg * jnp.arange(D)) - 2.0 * jnp.sum(ztxt)

  got = _one(_term(probe, pair=("image", "sketch")), outs)
  np.testing.assert_array_equal(seen["zimg"], outs["z/image"])
  np.testing.assert_array_equal(seen["ztxt"], outs["z/sketch"])
  want = jnp.sum(outs["z/image"] * jnp.arange(D)) - 2.0 * jnp.sum(outs["z/sketch"])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # The order of the pair is the order of the parameters.
  _one(_term(probe, pair=("sketch", "image")), outs)
  np.testing.assert_array_equal(seen["zimg"], outs["z/sketch"])
  np.testing.assert_array_equal(seen["ztxt"], outs["z/image"])
  # A built-in over the pair, from a config spec.
  term = losses.make_term("align", dict(fn="mse_alignment", pair=("image", "sketch")))
  np.testing.assert_allclose(_one(term, outs),
                             losses.mse_alignment(outs["z/image"], outs["z/sketch"]),
                             rtol=1e-6)
  # Namespaced outputs win over plain arrays of the parameter's name.
  _one(_term(probe, pair=("image", "text")),
       dict(outs, zimg=jnp.zeros((B, D)), ztxt=jnp.zeros((B, D))))
  np.testing.assert_array_equal(seen["zimg"], outs["z/image"])
  np.testing.assert_array_equal(seen["ztxt"], outs["z/text"])


def test_pair_scale_is_preferred_over_the_shared_scale(outs):
  zi, zt, zs = outs["z/image"], outs["z/text"], outs["z/sketch"]
  sig = losses.make_term("sig", dict(fn="sigmoid_contrastive", pair=("image", "sketch")))
  np.testing.assert_allclose(
      _one(sig, outs), losses.sigmoid_contrastive(zi, zs, 7.0, -3.0), rtol=1e-6)
  # A pair without its own scale reads the shared one.
  sig_text = losses.make_term("sig", dict(fn="sigmoid_contrastive"))
  np.testing.assert_allclose(
      _one(sig_text, outs), losses.sigmoid_contrastive(zi, zt, 5.0, -2.0), rtol=1e-6)
  # Derived logits use the pair's scale too (and no bias).
  seen = {}

  def sees_logits(logits):
    seen["logits"] = logits
    return jnp.sum(logits)

  _one(_term(sees_logits, pair=("image", "sketch")), outs)
  np.testing.assert_allclose(seen["logits"], 7.0 * zi @ zs.T, rtol=1e-5)
  assert seen["logits"].dtype == jnp.float32
  _one(_term(sees_logits), outs)
  np.testing.assert_allclose(seen["logits"], 5.0 * zi @ zt.T, rtol=1e-5)
  # The pair scale of (image, sketch) is the model's scale/image/sketch, which
  # a term over (sketch, image) does not read.
  def scale_of(scale, bias):
    return scale + 100.0 * bias
  np.testing.assert_allclose(_one(_term(scale_of, pair=("image", "sketch")), outs), -293.0)
  np.testing.assert_allclose(_one(_term(scale_of, pair=("sketch", "image")), outs), -195.0)


def test_parameter_read_from_a_batch_field(outs):
  def weighted(zimg, ztxt, weights):
    return jnp.sum(weights * jnp.sum((zimg - ztxt) ** 2, axis=-1))

  term = _term(weighted)
  w = jnp.arange(B, dtype=jnp.float32)
  want = jnp.sum(w * jnp.sum((outs["z/image"] - outs["z/text"]) ** 2, axis=-1))
  batch = {"image": jnp.zeros((B, 2, 2, 3), jnp.uint8), "weights": w}
  np.testing.assert_allclose(_one(term, outs, batch), want, rtol=1e-6)
  losses.check({"weighted": term}, MODEL, ("image", "text", "weights"))
  # A model output of the same name shadows the field.
  np.testing.assert_allclose(_one(term, dict(outs, weights=2 * w), batch), 2 * want,
                             rtol=1e-6)
  # Without the field it is reported, with what there is and the fix.
  with pytest.raises(losses.LossConfigError) as e:
    losses.check({"weighted": term}, MODEL, ("image", "text"), ("image", "text", "sketch"))
  msg = str(e.value)
  assert "loss term 'weighted' (weighted) reads 'weights'" in msg
  assert f"no model output {sorted(MODEL)}" in msg
  assert "batch field ['image', 'text'] provides" in msg
  assert "set config.loss.terms.weighted.inputs={'weights': NAME}" in msg
  with pytest.raises(losses.LossConfigError, match="reads 'weights'"):
    losses.combine({"weighted": term})(outs, {"image": batch["image"]})


def test_inputs_map_a_parameter_to_a_namespaced_output(outs):
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=3 * B), jnp.float32)
  labels = jnp.concatenate([jnp.ones(B), jnp.zeros(2 * B)]).astype(jnp.float32)
  out = dict(outs, **{"itm/logits": logits, "itm/labels": labels})
  spec = dict(fn="binary_cross_entropy", weight=0.5,
              inputs=dict(logits="itm/logits", labels="itm/labels"))
  term = losses.make_term("itm", spec)
  assert term.inputs == {"logits": "itm/logits", "labels": "itm/labels"}
  want = losses.binary_cross_entropy(logits, labels)
  np.testing.assert_allclose(_one(term, out), want, rtol=1e-6)
  losses.check({"itm": term}, MODEL + ("itm/logits", "itm/labels"))
  # inputs win over an output of the parameter's own name and over derived logits.
  out["logits"] = jnp.zeros(3 * B)
  np.testing.assert_allclose(_one(term, out), want, rtol=1e-6)
  # inputs may name a batch field as well.
  field = losses.make_term("itm", dict(spec, inputs=dict(logits="itm/logits",
                                                         labels="match")))
  np.testing.assert_allclose(_one(field, out, {"match": labels}), want, rtol=1e-6)
  losses.check({"itm": field}, MODEL + ("itm/logits",), ("match",))
  # An input naming nothing there says which mapping failed...
  with pytest.raises(losses.LossConfigError) as e:
    losses.check({"itm": term}, MODEL + ("itm/labels",), ("image", "text"))
  msg = str(e.value)
  assert "loss term 'itm' (binary_cross_entropy) reads 'logits' from 'itm/logits'" in msg
  assert "(its inputs)" in msg
  assert "set config.loss.terms.itm.inputs={'logits': NAME}" in msg
  # ...and one in the namespace of a head the model lacks names the head.
  with pytest.raises(losses.LossConfigError,
                     match=r"reads 'logits' from 'itm/logits', an output of a head 'itm' the "
                           r"model does not have; add it \(config.model.heads.itm"):
    losses.check({"itm": term}, MODEL, ("image", "text"))


def test_logits_are_derived_at_the_teacher_temperature(outs):
  temperature = outs["teacher/temperature"]
  zi, zt = outs["z/image"], outs["z/text"]
  ti, tt = outs["teacher/z/image"], outs["teacher/z/text"]
  student = zi @ zt.T / temperature
  teacher = ti @ tt.T / temperature
  kl = losses.make_term("kl", dict(fn="kl_alignment", weight=0.3))
  got = _one(kl, outs)
  np.testing.assert_allclose(got, losses.kl_alignment(student, teacher), rtol=1e-5)
  # Not at the student's own scale.
  assert abs(float(got) - float(losses.kl_alignment(5.0 * zi @ zt.T, teacher))) > 1e-3
  # A term over another pair compares that pair's matrices.
  kl_sketch = losses.make_term("kl", dict(fn="kl_alignment", pair=("image", "sketch")))
  np.testing.assert_allclose(
      _one(kl_sketch, outs),
      losses.kl_alignment(zi @ outs["z/sketch"].T / temperature,
                          ti @ outs["teacher/z/sketch"].T / temperature), rtol=1e-5)
  # In one sum, a term that reads only `logits` still gets the student's scale.
  seen = {}

  def sees(logits):
    seen["logits"] = logits
    return jnp.sum(logits)

  total, per_term = losses.combine({"kl": kl, "sees": _term(sees)})(outs)
  np.testing.assert_allclose(seen["logits"], 5.0 * zi @ zt.T, rtol=1e-5)
  np.testing.assert_allclose(total, 0.3 * per_term["kl"] + per_term["sees"], rtol=1e-6)
  # teacher_zimg / teacher_ztxt are the teacher's embeddings of the pair.
  pair = {}

  def reads_teacher(zimg, teacher_zimg, teacher_ztxt):
    pair.update(zimg=zimg, teacher_zimg=teacher_zimg, teacher_ztxt=teacher_ztxt)
    return jnp.sum(teacher_zimg) + jnp.sum(teacher_ztxt)

  _one(_term(reads_teacher, pair=("sketch", "text")), outs)
  np.testing.assert_array_equal(pair["zimg"], outs["z/sketch"])
  np.testing.assert_array_equal(pair["teacher_zimg"], outs["teacher/z/sketch"])
  np.testing.assert_array_equal(pair["teacher_ztxt"], outs["teacher/z/text"])
  losses.check({"kl": kl, "kl_sketch": kl_sketch}, MODEL + TEACHER)


@pytest.mark.parametrize("path", ["mmjax.losses.contrastive.sigmoid_contrastive",
                                  "mmjax.losses.contrastive:sigmoid_contrastive",
                                  "mmjax.losses.sigmoid_contrastive"])
def test_dotted_path_builtin_has_the_forms_of_its_registered_name(path):
  term = losses.make_term("sig", dict(fn=path))
  assert term.fn_name == path and term.fn is contrastive.sigmoid_contrastive
  assert (losses.distributed_forms(term.fn)
          == losses.distributed_forms(registry.get("sigmoid_contrastive"))
          == {"ring": sharded.sharded_sigmoid_contrastive})
  soft = losses.make_term("soft", dict(fn="mmjax.losses.contrastive.softmax_contrastive"))
  assert losses.distributed_forms(soft.fn) == {"gather": sharded.sharded_softmax_contrastive}
  mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"))
  form = losses.choose_form(term.fn, losses.distributed_forms(term.fn), "auto", mesh)
  assert form.func is sharded.sharded_sigmoid_contrastive
  assert form.keywords == {"mesh": mesh, "batch_axes": ("data", "fsdp")}


@pytest.fixture(scope="module")
def mesh8():
  return jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"))


def test_dotted_path_term_runs_its_distributed_form_in_the_train_loss(outs, mesh8):
  """build.loss_fn picks the ring for the dotted path as for the name, with the
  pair's own scale and bias, and both equal the single-device loss."""
  from mmjax.train import build  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"loss": {"impl": "auto"}})
  named = losses.make_term("named", dict(fn="sigmoid_contrastive", pair=("image", "sketch")))
  dotted = losses.make_term("dotted", dict(fn="mmjax.losses.contrastive.sigmoid_contrastive",
                                           pair=("image", "sketch"), weight=2.0))
  terms = {"named": named, "dotted": dotted}
  loss_fn = build.loss_fn(config, terms, mesh8)
  assert loss_fn.terms == terms
  compiled = jax.jit(loss_fn).lower(outs).compile()
  hlo = compiled.as_text()
  assert f"f32[{B},{B}]" not in hlo, "the global B x B logits were formed"
  total, per_term = compiled(outs)
  want = losses.sigmoid_contrastive(outs["z/image"], outs["z/sketch"], 7.0, -3.0)
  np.testing.assert_allclose(per_term["named"], want, rtol=1e-5)
  np.testing.assert_allclose(per_term["dotted"], want, rtol=1e-5)
  np.testing.assert_allclose(total, 3.0 * want, rtol=1e-5)


# --- configs -----------------------------------------------------------------


def test_from_config_reads_term_specs():
  cfg = ml_collections.ConfigDict({
      "name": "sigmoid_contrastive", "weight": 1.0, "pair": ("image", "text"),
      "terms": {
          "sketch_align": {"fn": "softmax_contrastive", "weight": 0.5,
                           "pair": ("image", "sketch")},
          "itm": {"fn": "binary_cross_entropy",
                  "inputs": {"logits": "itm/logits", "labels": "itm/labels"}},
          "mse_alignment": 0.25}})
  terms = losses.from_config(cfg)
  # The main term first (a ConfigDict keeps the other ids sorted).
  assert list(terms)[0] == "sigmoid_contrastive"
  assert sorted(terms) == ["itm", "mse_alignment", "sigmoid_contrastive", "sketch_align"]
  assert terms["sketch_align"] == losses.Term(
      "sketch_align", "softmax_contrastive", losses.softmax_contrastive, 0.5,
      ("image", "sketch"), {})
  assert terms["itm"].weight == 1.0 and terms["itm"].pair == ("image", "text")
  assert terms["itm"].inputs == {"logits": "itm/logits", "labels": "itm/labels"}
  assert terms["mse_alignment"].fn is losses.mse_alignment
  # loss.pair moves the main term.
  main = losses.from_config({"name": "mse_alignment", "pair": ("image", "sketch")})
  assert main["mse_alignment"].pair == ("image", "sketch")


@pytest.mark.parametrize("spec, match", [
    (dict(fn="mse_alignment", pairs=("a", "b")),
     r"config\.loss\.terms\.t has unknown keys \['pairs'\]; a term takes \('fn', 'weight', "
     r"'pair', 'inputs'\)"),
    (dict(fn="mse_alignment", pair="image"),
     r"config\.loss\.terms\.t\.pair='image' must be two modality names"),
    (dict(fn="mse_alignment", pair=("image", "text", "sketch")),
     r"config\.loss\.terms\.t\.pair=\('image', 'text', 'sketch'\) must be two modality"),
    (dict(fn="binary_cross_entropy", inputs={"logits": 3}),
     r"config\.loss\.terms\.t\.inputs=\{'logits': 3\} must map parameter names"),
    (dict(fn="mse_alignment", weight=-1), r"weight of config\.loss\.terms\.t is -1\.0"),
    ("heavy", r"config\.loss\.terms\.t='heavy': give a weight"),
    (dict(fn="no_such_loss"), "unknown loss 'no_such_loss'"),
])
def test_bad_term_specs_name_the_key(spec, match):
  with pytest.raises(ValueError, match=match):
    losses.make_term("t", spec)


def test_a_spec_under_the_main_loss_id_is_refused():
  with pytest.raises(losses.LossConfigError,
                     match=r"config\.loss\.terms\.mse_alignment has the id of the main loss"):
    losses.from_config({"name": "mse_alignment",
                        "terms": {"mse_alignment": {"fn": "cosine_alignment"}}})


# --- check() -------------------------------------------------------------------


def test_check_pair_with_no_tower_names_the_towers_and_the_fix():
  term = losses.make_term("sketch_sig", dict(fn="sigmoid_contrastive",
                                             pair=("image", "sketch")))
  model = ("z/image", "z/text", "scale", "bias")
  with pytest.raises(losses.LossConfigError) as e:
    losses.check({"sketch_sig": term}, model, ("image", "text"), ("image", "text"))
  msg = str(e.value)
  assert "loss term 'sketch_sig' (sigmoid_contrastive) is over the pair ('image', 'sketch')" \
      in msg
  assert "the model has no tower for ['sketch'] (towers: ['image', 'text'])" in msg
  assert ("add config.model.towers.sketch or set config.loss.terms.sketch_sig.pair to two "
          "of ['image', 'text']") in msg
  # Also for a term that reads only derived logits of the missing pair.
  bce = losses.make_term("bce", dict(fn="binary_cross_entropy", pair=("sketch", "text"),
                                     inputs=dict(labels="match")))
  with pytest.raises(losses.LossConfigError, match=r"no tower for \['sketch'\]"):
    losses.check({"bce": bce}, model, ("match",), ("image", "text"))
  losses.check({"sketch_sig": term}, MODEL, (), ("image", "text", "sketch"))


def test_check_parameter_nothing_provides():
  def hinge(zimg, ztxt, margin_table):
    return jnp.sum(zimg) + jnp.sum(margin_table)

  term = _term(hinge)
  model = ("z/image", "z/text", "scale", "bias")
  with pytest.raises(losses.LossConfigError) as e:
    losses.check({"hinge": term}, model, ("text", "image"), ("image", "text"))
  msg = str(e.value)
  assert ("loss term 'hinge' (hinge) reads 'margin_table', which no model output "
          "['bias', 'scale', 'z/image', 'z/text'] or batch field ['image', 'text'] "
          "provides") in msg
  assert ("set config.loss.terms.hinge.inputs={'margin_table': NAME} to read another "
          "output or field, or remove the term.") in msg
  # A parameter with a default need not be provided.
  def with_default(zimg, margin_table=1.0):
    return jnp.sum(zimg) * margin_table
  losses.check({"d": _term(with_default, tid="d")}, model)


def test_check_teacher_input_without_a_teacher():
  model = ("z/image", "z/text", "scale", "bias")
  term = losses.make_term("distill", dict(fn="mse_to_teacher", pair=("image", "sketch")))
  with pytest.raises(losses.LossConfigError) as e:
    losses.check({"distill": term}, model + ("z/sketch",))
  msg = str(e.value)
  assert "loss term 'distill' (mse_to_teacher) reads 'teacher_zimg', which needs a teacher" \
      in msg
  assert ("set config.distill.teacher to the workdir of a finished run with towers for "
          "('image', 'sketch'), or remove the term.") in msg

  def reads_teacher_logits(teacher_logits):
    return jnp.sum(teacher_logits)

  with pytest.raises(losses.LossConfigError,
                     match=r"reads 'teacher_logits', which needs a teacher: set "
                           r"config\.distill\.teacher"):
    losses.check({"t": _term(reads_teacher_logits, tid="t")}, model)
  # With a teacher's outputs both pass.
  losses.check({"t": _term(reads_teacher_logits, tid="t")}, model + TEACHER)
  losses.check({"distill": losses.make_term("distill", dict(fn="mse_to_teacher"))},
               model + TEACHER)


def test_check_accepts_plain_names_and_bare_weights():
  losses.check({"softmax_contrastive": 1.0, "mse_alignment": 0.5},
               ("zimg", "ztxt", "scale"))
  with pytest.raises(losses.LossConfigError, match="reads 'bias'"):
    losses.check({"sigmoid_contrastive": 1.0}, ("zimg", "ztxt", "scale"))
  assert terms_lib.DEFAULT_PAIR == ("image", "text")


def test_an_unfilled_positional_only_default_keeps_later_arguments_in_place():
  def f(zimg, b=1, c=2, /):
    return zimg.sum() * 0 + 10 * b + c

  fn = terms_lib.combine({"f": terms_lib.Term(id="f", fn_name="f", fn=f, weight=1.0)})
  total, _ = fn({"zimg": jnp.ones((2, 3)), "c": jnp.float32(5)})
  assert float(total) == 15.0


def test_a_term_reading_only_inputs_needs_no_tower_for_its_default_pair():
  term = terms_lib.make_term("itm", dict(fn="binary_cross_entropy",
                                     inputs=dict(logits="itm/logits", labels="itm/labels")))
  terms_lib.check({"itm": term}, ["z/audio", "itm/logits", "itm/labels"], [], ["audio"])
