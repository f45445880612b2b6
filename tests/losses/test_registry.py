"""Tests for mmjax.losses.registry: lookup, fork losses, weighted sums, configs."""

import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import mmjax.losses
from mmjax.losses import registry

BUILTINS = ["cosine_alignment", "kl_alignment", "mse_alignment",
            "sigmoid_contrastive", "softmax_contrastive"]
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
  """Lets a test register losses; the registry is restored afterwards."""
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


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
  total, per_term = registry.combine({"fork_hinge": 2.0})(out)
  want = module.fork_hinge(out["zimg"], out["ztxt"], out["scale"])
  np.testing.assert_allclose(total, 2.0 * want, rtol=1e-6)
  np.testing.assert_allclose(per_term["fork_hinge"], want, rtol=1e-6)


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


def test_combine_is_the_weighted_sum():
  out = outputs()
  loss_fn = registry.combine({"softmax_contrastive": 1.0, "sigmoid_contrastive": 0.5,
                              "mse_alignment": 2.0, "cosine_alignment": 0.0})
  total, per_term = jax.jit(loss_fn)(out)
  soft = mmjax.losses.softmax_contrastive(out["zimg"], out["ztxt"], out["scale"])
  sig = mmjax.losses.sigmoid_contrastive(out["zimg"], out["ztxt"], out["scale"],
                                         out["bias"])
  mse = mmjax.losses.mse_alignment(out["zimg"], out["ztxt"])
  assert set(per_term) == {"softmax_contrastive", "sigmoid_contrastive",
                           "mse_alignment"}  # Weight 0 drops the term.
  assert loss_fn.terms == {"softmax_contrastive": 1.0, "sigmoid_contrastive": 0.5,
                           "mse_alignment": 2.0}
  np.testing.assert_allclose(per_term["sigmoid_contrastive"], sig, rtol=1e-6)
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
  _, per_term = registry.combine({"probe": 1.0, "sees_logits": 1.0})(out)
  np.testing.assert_allclose(per_term["probe"], s * z_i - z_t + 10.0, rtol=1e-6)
  # Missing logits are derived as scale * zimg @ ztxt.T, without the bias.
  logits = s * out["zimg"] @ out["ztxt"].T
  weights = np.arange(logits.size).reshape(logits.shape)
  np.testing.assert_allclose(per_term["sees_logits"], np.sum(logits * weights),
                             rtol=1e-5)
  # Outputs win over defaults and over derived logits.
  given = dict(out, margin=jnp.float32(0.0), logits=jnp.ones_like(logits))
  _, per_term = registry.combine({"probe": 1.0, "sees_logits": 1.0})(given)
  np.testing.assert_allclose(per_term["probe"], s * z_i - z_t, rtol=1e-6)
  np.testing.assert_allclose(per_term["sees_logits"], weights.sum(), rtol=1e-6)


def test_kl_term_against_teacher_logits():
  out = outputs()
  teacher = 3.0 * out["zimg"] @ out["zimg"].T
  loss_fn = registry.combine({"softmax_contrastive": 1.0, "kl_alignment": 0.3})
  total, per_term = loss_fn(dict(out, teacher_logits=teacher))
  student = out["scale"] * out["zimg"] @ out["ztxt"].T
  want = mmjax.losses.kl_alignment(student, teacher)
  np.testing.assert_allclose(per_term["kl_alignment"], want, rtol=1e-5)
  np.testing.assert_allclose(
      total, per_term["softmax_contrastive"] + 0.3 * want, rtol=1e-6)


def test_required_inputs():
  assert registry.required_inputs("kl_alignment") == ("logits", "teacher_logits")
  assert registry.required_inputs("sigmoid_contrastive") == (
      "zimg", "ztxt", "scale", "bias")


def test_check_inputs_names_loss_argument_and_outputs():
  model = ["zimg", "ztxt", "scale", "bias"]
  terms = {"softmax_contrastive": 1.0, "kl_alignment": 0.5}
  with pytest.raises(ValueError) as e:
    registry.check_inputs(terms, model)
  msg = str(e.value)
  assert "loss 'kl_alignment' needs 'teacher_logits'" in msg
  assert "['bias', 'scale', 'zimg', 'ztxt']" in msg
  assert "teacher" in msg.split("provides")[1]
  registry.check_inputs(terms, model + ["teacher_logits"])  # logits derivable.
  with pytest.raises(ValueError, match="needs 'logits'.*computed from"):
    registry.check_inputs({"kl_alignment": 1.0}, ["zimg", "ztxt", "teacher_logits"])
  registry.check_inputs({"kl_alignment": 1.0, "sigmoid_contrastive": 0.0},
                        ["logits", "teacher_logits"])  # Weight-0 terms are off.
  # The combined loss raises the same error while tracing, before compiling.
  with pytest.raises(ValueError, match="needs 'teacher_logits'"):
    jax.jit(registry.combine(terms))(outputs())


@pytest.mark.parametrize("terms, match", [
    ({}, "no loss terms"),
    ({"softmax_contrastive": 0.0}, "weight 0"),
    ({"softmax_contrastive": 1.0, "mse_alignment": -0.1}, "'mse_alignment'"),
    ({"softmax_contrastive": float("nan")}, "'softmax_contrastive'.*finite"),
    ({"softmax_contrastive": "heavy"}, "must be a number"),
    ({"softmax_contrasitve": 1.0}, "unknown loss 'softmax_contrasitve'"),
])
def test_combine_rejects_bad_terms_when_built(terms, match):
  with pytest.raises(ValueError, match=match):
    registry.combine(terms)


def test_non_scalar_fork_loss_is_rejected(clean_registry):
  registry.register("per_example", lambda zimg: jnp.sum(zimg, axis=-1))
  with pytest.raises(ValueError, match="'per_example' returned shape \\(4,\\)"):
    registry.combine({"per_example": 1.0})(outputs())


def test_from_config_merges_and_defaults():
  assert registry.from_config({"name": "sigmoid_contrastive"}) == {
      "sigmoid_contrastive": 1.0}
  cfg = ml_collections.ConfigDict({
      "name": "softmax_contrastive", "weight": 2.0,
      "terms": {"softmax_contrastive": 0.5, "kl_alignment": 0.1,
                "mse_alignment": 0.0}})
  assert registry.from_config(cfg) == {
      "softmax_contrastive": 2.5, "kl_alignment": 0.1, "mse_alignment": 0.0}
  assert registry.from_config({"name": "mse_alignment", "terms": {}}) == {
      "mse_alignment": 1.0}
  assert registry.from_config({"name": "mse_alignment", "terms": None}) == {
      "mse_alignment": 1.0}


def test_from_config_errors_name_the_config_key():
  with pytest.raises(ValueError, match="config.loss.name"):
    registry.from_config({"terms": {"mse_alignment": 1.0}})
  with pytest.raises(ValueError, match="config.loss.terms\\['kl_alignment'\\]"):
    registry.from_config({"name": "softmax_contrastive",
                          "terms": {"kl_alignment": -1.0}})
