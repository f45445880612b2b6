"""Tests for mmjax.losses.registry: lookup, fork losses, distributed forms, and
the weighted sums and configs of mmjax.losses.terms that name losses from it."""

import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import mmjax.losses
from mmjax import losses
from mmjax.losses import registry
from mmjax.losses import sharded

BUILTINS = ["binary_cross_entropy", "cosine_alignment", "kl_alignment", "mse_alignment",
            "mse_to_teacher", "sigmoid_contrastive", "softmax_contrastive"]
FORK = "mmjax_test_fork_losses"

FORK_SOURCE = textwrap.dedent("""
    import jax.numpy as jnp
    import mmjax.losses

    @mmjax.losses.register("fork_hinge")
    def fork_hinge(zimg, ztxt, scale):
      sims = scale * jnp.sum(zimg * ztxt, axis=-1)
      return jnp.mean(jnp.maximum(0.0, 1.0 - sims))

    def unregistered(zimg, ztxt):
      return jnp.sum(zimg - ztxt)

    class Losses:
      @staticmethod
      def nested(zimg):
        return jnp.sum(zimg)

    NOT_A_FUNCTION = 3
""")


@pytest.fixture
def clean_registry(monkeypatch):
  """Lets a test register losses (and their forms); both tables are restored afterwards."""
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  monkeypatch.setattr(registry, "_DISTRIBUTED", dict(registry._DISTRIBUTED))


@pytest.fixture
def fork(tmp_path, monkeypatch, clean_registry):
  """A fork's own loss module, importable by name, removed afterwards."""
  (tmp_path / f"{FORK}.py").write_text(FORK_SOURCE)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield FORK
  sys.modules.pop(FORK, None)


def outputs(seed=0, b=4, d=8):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(2, b, d))
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  return {"zimg": jnp.asarray(z[0], jnp.float32), "ztxt": jnp.asarray(z[1], jnp.float32),
          "scale": jnp.float32(5.0), "bias": jnp.float32(-2.0)}


def _weights(terms):
  return {tid: t.weight for tid, t in terms.items()}


def test_builtins_are_registered_under_their_names():
  assert registry.names() == sorted(registry.names())
  assert set(BUILTINS) <= set(registry.names())
  for name in BUILTINS:
    assert registry.get(name) is getattr(mmjax.losses, name)


def test_unknown_name_lists_registered_names_and_the_fix():
  with pytest.raises(ValueError) as e:
    registry.get("softmax")
  msg = str(e.value)
  assert "'softmax'" in msg
  for name in BUILTINS:
    assert repr(name) in msg
  assert "mmjax.losses.register" in msg and "dotted path" in msg
  assert "Did you mean 'softmax_contrastive'" in msg


def test_dotted_path_import(fork):
  for path in (f"{fork}.unregistered", f"{fork}:unregistered"):
    fn = registry.get(path)
    assert fn.__name__ == "unregistered" and fn.__module__ == fork
  assert registry.get(f"{fork}:Losses.nested").__name__ == "nested"
  # Naming a loss by path does not register it.
  assert f"{fork}.unregistered" not in registry.names()


def test_dotted_path_failures_say_what_failed(fork):
  with pytest.raises(ValueError, match="could not import module "
                     "'no_such_pkg_xyz.losses'.*No module named 'no_such_pkg_xyz'"):
    registry.get("no_such_pkg_xyz.losses.my_loss")
  with pytest.raises(ValueError, match=f"module '{fork}'.*no attribute 'missing'"):
    registry.get(f"{fork}.missing")
  with pytest.raises(ValueError, match="not callable"):
    registry.get(f"{fork}.NOT_A_FUNCTION")


def test_fork_registers_with_decorator(fork):
  assert "fork_hinge" not in registry.names()
  module = __import__(fork)
  assert registry.get("fork_hinge") is module.fork_hinge
  assert "fork_hinge" in registry.names()
  assert registry.required_inputs("fork_hinge") == ("zimg", "ztxt", "scale")
  # Its loss joins a weighted sum like a built-in one.
  out = outputs()
  total, per_term = losses.combine({"fork_hinge": 2.0})(out)
  want = module.fork_hinge(out["zimg"], out["ztxt"], out["scale"])
  np.testing.assert_allclose(total, 2.0 * want, rtol=1e-6)
  np.testing.assert_allclose(per_term["fork_hinge"], want, rtol=1e-6)
  # A fork loss has no distributed forms unless it registers some.
  assert registry.distributed_forms(module.fork_hinge) == {}


def test_register_conflicts(clean_registry):
  def mine(zimg):
    return jnp.sum(zimg)

  assert registry.register("mine", mine) is mine
  assert registry.register("mine", mine) is mine  # Same function: no-op.
  with pytest.raises(ValueError, match="already registered"):
    registry.register("mine", lambda zimg: 0.0)
  with pytest.raises(ValueError, match="softmax_contrastive"):
    registry.register("softmax_contrastive")(mine)
  with pytest.raises(TypeError, match="register\\('my_loss'\\)"):
    registry.register(mine)


def test_distributed_forms_are_registered_with_the_function(clean_registry):
  assert registry.distributed_forms(losses.softmax_contrastive) == {
      "gather": sharded.sharded_softmax_contrastive}
  assert registry.distributed_forms(losses.sigmoid_contrastive) == {
      "ring": sharded.sharded_sigmoid_contrastive}
  for name in ("kl_alignment", "mse_alignment", "mse_to_teacher", "cosine_alignment",
               "binary_cross_entropy"):
    assert registry.distributed_forms(registry.get(name)) == {}, name

  def mine(zimg, ztxt, scale):
    return jnp.sum(scale * zimg * ztxt)

  def mine_sharded(zimg, ztxt, scale, *, mesh, batch_axes):
    return mine(zimg, ztxt, scale)

  @registry.register("with_form", distributed={"custom": mine_sharded})
  def with_form(zimg, ztxt, scale):
    return mine(zimg, ztxt, scale)

  assert registry.distributed_forms(with_form) == {"custom": mine_sharded}
  # A copy: editing it does not change what is registered.
  registry.distributed_forms(with_form).clear()
  assert registry.distributed_forms(with_form) == {"custom": mine_sharded}
  # An unhashable callable has none (and does not raise).
  class Unhashable:
    __hash__ = None
    def __call__(self, zimg):
      return zimg
  assert registry.distributed_forms(Unhashable()) == {}


def test_combine_is_the_weighted_sum():
  out = outputs()
  loss_fn = losses.combine({"softmax_contrastive": 1.0, "sigmoid_contrastive": 0.5,
                            "mse_alignment": 2.0, "cosine_alignment": 0.0})
  total, per_term = jax.jit(loss_fn)(out)
  soft = mmjax.losses.softmax_contrastive(out["zimg"], out["ztxt"], out["scale"])
  sig = mmjax.losses.sigmoid_contrastive(out["zimg"], out["ztxt"], out["scale"],
                                         out["bias"])
  mse = mmjax.losses.mse_alignment(out["zimg"], out["ztxt"])
  assert set(per_term) == {"softmax_contrastive", "sigmoid_contrastive",
                           "mse_alignment"}  # Weight 0 drops the term.
  assert _weights(loss_fn.terms) == {"softmax_contrastive": 1.0, "sigmoid_contrastive": 0.5,
                                     "mse_alignment": 2.0}
  for tid, term in loss_fn.terms.items():
    assert isinstance(term, losses.Term)
    assert (term.id, term.fn_name, term.fn) == (tid, tid, registry.get(tid))
    assert term.pair == ("image", "text") and dict(term.inputs) == {}
  np.testing.assert_allclose(per_term["softmax_contrastive"], soft, rtol=1e-6)
  np.testing.assert_allclose(per_term["sigmoid_contrastive"], sig, rtol=1e-6)
  np.testing.assert_allclose(per_term["mse_alignment"], mse, rtol=1e-6)
  np.testing.assert_allclose(total, soft + 0.5 * sig + 2.0 * mse, rtol=1e-6)
  assert total.dtype == jnp.float32


def test_arguments_are_bound_by_name(clean_registry):
  @registry.register("probe")
  def probe(ztxt, scale, zimg, margin=10.0):  # Not the outputs' order.
    return scale * zimg[0, 0] - ztxt[0, 0] + margin

  @registry.register("sees_logits")
  def sees_logits(logits):
    return jnp.sum(logits * jnp.arange(logits.size).reshape(logits.shape))

  out = outputs()
  z_i, z_t, s = out["zimg"][0, 0], out["ztxt"][0, 0], out["scale"]
  _, per_term = losses.combine({"probe": 1.0, "sees_logits": 1.0})(out)
  np.testing.assert_allclose(per_term["probe"], s * z_i - z_t + 10.0, rtol=1e-6)
  # Missing logits are derived as scale * zimg @ ztxt.T, without the bias.
  logits = s * out["zimg"] @ out["ztxt"].T
  weights = np.arange(logits.size).reshape(logits.shape)
  np.testing.assert_allclose(per_term["sees_logits"], np.sum(logits * weights),
                             rtol=1e-5)
  # Outputs win over defaults and over derived logits.
  given = dict(out, margin=jnp.float32(0.0), logits=jnp.ones_like(logits))
  _, per_term = losses.combine({"probe": 1.0, "sees_logits": 1.0})(given)
  np.testing.assert_allclose(per_term["probe"], s * z_i - z_t, rtol=1e-6)
  np.testing.assert_allclose(per_term["sees_logits"], weights.sum(), rtol=1e-6)


def test_kl_term_against_teacher_logits():
  # A term reading teacher_logits compares them with the student's logits at
  # the teacher's temperature, zimg @ ztxt.T / T, not at the student's scale.
  out = outputs()
  teacher = 3.0 * out["zimg"] @ out["zimg"].T
  temperature = jnp.float32(0.25)
  loss_fn = losses.combine({"softmax_contrastive": 1.0, "kl_alignment": 0.3})
  total, per_term = loss_fn(dict(out, teacher_logits=teacher,
                                 **{"teacher/temperature": temperature}))
  student = out["zimg"] @ out["ztxt"].T / temperature
  want = mmjax.losses.kl_alignment(student, teacher)
  np.testing.assert_allclose(per_term["kl_alignment"], want, rtol=1e-5)
  # The contrastive term in the same sum still reads the model's own scale.
  np.testing.assert_allclose(
      per_term["softmax_contrastive"],
      mmjax.losses.softmax_contrastive(out["zimg"], out["ztxt"], out["scale"]), rtol=1e-6)
  np.testing.assert_allclose(
      total, per_term["softmax_contrastive"] + 0.3 * want, rtol=1e-6)
  # Student logits given as such are used as given.
  given = 2.0 * out["zimg"] @ out["ztxt"].T
  _, per_term = loss_fn(dict(out, logits=given, teacher_logits=teacher))
  np.testing.assert_allclose(per_term["kl_alignment"],
                             mmjax.losses.kl_alignment(given, teacher), rtol=1e-5)


def test_required_inputs():
  assert registry.required_inputs("kl_alignment") == ("logits", "teacher_logits")
  assert registry.required_inputs("sigmoid_contrastive") == (
      "zimg", "ztxt", "scale", "bias")
  # A function, a dotted path and its registered name agree; defaults are not required.
  assert registry.required_inputs(mmjax.losses.mse_to_teacher) == (
      "zimg", "ztxt", "teacher_zimg", "teacher_ztxt")
  assert registry.required_inputs("mmjax.losses.contrastive.softmax_contrastive") == (
      "zimg", "ztxt", "scale")
  assert registry.required_inputs("binary_cross_entropy") == ("logits", "labels")


def test_check_names_term_argument_and_outputs():
  model = ["z/image", "z/text", "scale", "bias"]
  terms = {"softmax_contrastive": 1.0, "mse_to_teacher": 0.5}
  with pytest.raises(losses.LossConfigError) as e:
    losses.check(terms, model, ["image", "text"], ["image", "text"])
  msg = str(e.value)
  assert "loss term 'mse_to_teacher' (mse_to_teacher) reads 'teacher_zimg'" in msg
  assert "needs a teacher: set config.distill.teacher" in msg
  assert "or remove the term" in msg
  teacher = ["teacher/z/image", "teacher/z/text", "teacher/temperature"]
  losses.check(terms, model + teacher)
  # kl_alignment's logits are derived from the pair at the teacher temperature.
  losses.check({"kl_alignment": 1.0, "softmax_contrastive": 1.0}, model + teacher)
  with pytest.raises(losses.LossConfigError,
                     match=r"reads 'logits' \(compared with 'teacher_logits' at the "
                           r"teacher's temperature, teacher/temperature\), which needs a "
                           r"teacher: set config.distill.teacher"):
    losses.check({"kl_alignment": 1.0}, ["z/image", "z/text", "teacher_logits"])
  losses.check({"kl_alignment": 1.0, "sigmoid_contrastive": 0.0},
               ["logits", "teacher_logits"])  # Weight-0 terms are off.
  # The combined loss raises the same error while tracing, before compiling.
  with pytest.raises(losses.LossConfigError,
                     match="'mse_to_teacher' \\(mse_to_teacher\\) reads 'teacher_zimg'"):
    jax.jit(losses.combine(terms))(outputs())


def test_kl_without_a_teacher_names_the_teacher():
  model = ["z/image", "z/text", "scale", "bias"]
  with pytest.raises(losses.LossConfigError) as e:
    losses.check({"softmax_contrastive": 1.0, "kl_alignment": 0.5}, model)
  msg = str(e.value)
  assert "'kl_alignment'" in msg and "'teacher_logits'" in msg
  assert "set config.distill.teacher" in msg


@pytest.mark.parametrize("terms, match", [
    ({}, r"no loss term with a positive weight in \[\]"),
    ({"softmax_contrastive": 0.0},
     r"no loss term with a positive weight in \['softmax_contrastive'\]"),
    ({"softmax_contrastive": 1.0, "mse_alignment": -0.1},
     r"config\.loss\.terms\.mse_alignment is -0\.1; weights must be finite and >= 0"),
    ({"softmax_contrastive": float("nan")},
     r"config\.loss\.terms\.softmax_contrastive is nan; weights must be finite"),
    ({"softmax_contrastive": "heavy"},
     r"config\.loss\.terms\.softmax_contrastive='heavy': give a weight, or dict\(fn=\.\.\."),
    ({"soft": {"fn": "softmax_contrastive", "weight": "heavy"}},
     r"weight of config\.loss\.terms\.soft must be a number, got 'heavy'"),
    ({"softmax_contrasitve": 1.0}, "unknown loss 'softmax_contrasitve'"),
])
def test_combine_rejects_bad_terms_when_built(terms, match):
  with pytest.raises(ValueError, match=match):
    losses.combine(terms)


def test_non_scalar_fork_loss_is_rejected(clean_registry):
  registry.register("per_example", lambda zimg: jnp.sum(zimg, axis=-1))
  with pytest.raises(losses.LossConfigError,
                     match="'per_example' \\(per_example\\) returned shape \\(4,\\)"):
    losses.combine({"per_example": 1.0})(outputs())


def test_from_config_merges_and_defaults():
  terms = losses.from_config({"name": "sigmoid_contrastive"})
  assert list(terms) == ["sigmoid_contrastive"]
  assert terms["sigmoid_contrastive"] == losses.Term(
      id="sigmoid_contrastive", fn_name="sigmoid_contrastive",
      fn=losses.sigmoid_contrastive, weight=1.0, pair=("image", "text"), inputs={})
  cfg = ml_collections.ConfigDict({
      "name": "softmax_contrastive", "weight": 2.0,
      "terms": {"softmax_contrastive": 0.5, "kl_alignment": 0.1,
                "mse_alignment": 0.0}})
  terms = losses.from_config(cfg)
  # Main loss first; a bare weight under its name adds to it; weight 0 drops a term.
  assert list(terms) == ["softmax_contrastive", "kl_alignment"]
  assert _weights(terms) == {"softmax_contrastive": 2.5, "kl_alignment": 0.1}
  assert terms["kl_alignment"].fn is losses.kl_alignment
  assert terms["kl_alignment"].pair == ("image", "text")
  for none in ({}, None):
    terms = losses.from_config({"name": "mse_alignment", "terms": none})
    assert _weights(terms) == {"mse_alignment": 1.0}
  # No main loss: the terms alone.
  assert _weights(losses.from_config({"name": "", "terms": {"mse_alignment": 1.0}})) == {
      "mse_alignment": 1.0}
  assert _weights(losses.from_config({"terms": {"mse_alignment": 3.0}})) == {
      "mse_alignment": 3.0}


def test_from_config_errors_name_the_config_key():
  with pytest.raises(losses.LossConfigError, match="no loss terms: set config.loss.name"):
    losses.from_config({"terms": {}})
  with pytest.raises(losses.LossConfigError, match="config.loss.name must name a loss"):
    losses.from_config({"name": 3})
  with pytest.raises(losses.LossConfigError,
                     match=r"weight of config\.loss\.terms\.kl_alignment is -1\.0"):
    losses.from_config({"name": "softmax_contrastive",
                        "terms": {"kl_alignment": -1.0}})
  with pytest.raises(losses.LossConfigError, match=r"weight of config\.loss\.weight is -2"):
    losses.from_config({"name": "softmax_contrastive", "weight": -2})
  with pytest.raises(losses.LossConfigError,
                     match=r"every loss term has weight 0 \(\['mse_alignment', "
                           r"'softmax_contrastive'\]\)"):
    losses.from_config({"name": "softmax_contrastive", "weight": 0.0,
                        "terms": {"mse_alignment": 0.0}})
