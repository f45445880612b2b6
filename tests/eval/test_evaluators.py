"""Tests for mmjax/eval/evaluators.py and mmjax/eval/retrieval_evaluator.py:
batching, specs and schedules, building (every error before anything
compiles), the Retrieval evaluator over any pair on hand-made embeddings, the
Encoders of a tiny model, and the printed results."""

import contextlib
import re

import jax
import jax.monitoring
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.data import shapes_evaluators
from mmjax.eval import evaluators, retrieval, retrieval_evaluator
from mmjax.eval.evaluators import EvaluatorConfigError
from mmjax.eval.retrieval_evaluator import Retrieval
from mmjax.train import build
from mmjax.train import state as state_lib

from tests.train.conftest import tiny_config

CONTRACT_KEYS = {
    *(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)),
    "image_to_text_mean_rank", "image_to_text_median_rank",
    "text_to_image_mean_rank", "text_to_image_median_rank",
}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def no_compiles():
  """Fails the test if XLA compiles anything inside the block."""
  compiled = []

  def listen(event, duration, **kwargs):
    del duration
    if event == COMPILE_EVENT:
      compiled.append(kwargs.get("fun_name", "?"))

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield compiled
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
    assert compiled == [], f"compiled {compiled} before the error"


# --- batched ----------------------------------------------------------------------


def _recording(fn):
  shapes = []

  def wrapped(chunk):
    shapes.append(chunk.shape)
    return fn(chunk)

  return wrapped, shapes


@pytest.mark.parametrize("n, batch_size, calls", [
    (10, 4, [(4, 3)] * 3),  # the last batch (2 rows) padded to 4
    (8, 4, [(4, 3)] * 2),   # divides: no padding
    (3, 8, [(3, 3)]),       # smaller than one batch: one call of N rows, no padding
    (1, 1, [(1, 3)]),
])
def test_batched_pads_the_last_batch_and_returns_n_rows(n, batch_size, calls):
  x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
  fn, shapes = _recording(lambda c: c * 2 + 1)
  out = evaluators.batched(fn, x, batch_size)
  assert shapes == calls  # one shape: a jitted fn compiles once
  assert isinstance(out, np.ndarray) and out.shape == (n, 3)
  np.testing.assert_array_equal(out, x * 2 + 1)


def test_batched_pads_with_a_real_row_and_drops_the_padding():
  seen = []
  x = np.arange(5, dtype=np.int32)[:, None]
  out = evaluators.batched(lambda c: seen.append(c.copy()) or c, x, 3)
  # The padding repeats the last row (a valid input for any encoder) ...
  np.testing.assert_array_equal(seen[1], [[3], [4], [4]])
  # ... and none of it is returned.
  np.testing.assert_array_equal(out, x)


def test_batched_dicts_and_jax_outputs():
  x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
  fn, shapes = _recording(lambda c: {"z": jax.numpy.asarray(c.sum(1)),
                                     "tokens": np.repeat(c[:, None], 4, axis=1),
                                     "mask": c[:, :1] > 5})
  out = evaluators.batched(fn, x, 3)
  assert shapes == [(3, 2)] * 3
  assert set(out) == {"z", "tokens", "mask"}
  assert all(isinstance(v, np.ndarray) for v in out.values())
  assert out["z"].shape == (7,) and out["tokens"].shape == (7, 4, 2)
  assert out["mask"].shape == (7, 1) and out["mask"].dtype == bool
  np.testing.assert_array_equal(out["z"], x.sum(1))
  np.testing.assert_array_equal(out["tokens"], np.repeat(x[:, None], 4, axis=1))
  np.testing.assert_array_equal(out["mask"], x[:, :1] > 5)


# --- specs, enabled, due ------------------------------------------------------------


def test_specs_of_bare_periods_are_the_builtin_of_that_id():
  assert evaluators.specs({"retrieval": 0, "zeroshot": 4, "itm": -1, "heldout": None}) == {
      "retrieval": {"kind": "retrieval", "every": 0},
      "zeroshot": {"kind": "zeroshot", "every": 4},
      "itm": {"kind": "itm", "every": -1},
      "heldout": {"kind": "heldout", "every": None}}


def test_specs_of_dicts_default_kind_and_every_and_keep_kwargs():
  given = {"sketch": {"kind": "retrieval", "every": 5, "pair": ("image", "sketch")},
           "retrieval": {"pair": ("image", "text")},
           "mine": {"kind": "pkg.module.Eval", "every": None, "alpha": 2}}
  out = evaluators.specs(given)
  assert out == {
      "sketch": {"kind": "retrieval", "every": 5, "pair": ("image", "sketch")},
      "retrieval": {"kind": "retrieval", "every": 0, "pair": ("image", "text")},
      "mine": {"kind": "pkg.module.Eval", "every": None, "alpha": 2}}
  assert given["retrieval"] == {"pair": ("image", "text")}  # the config is not changed


def test_specs_of_the_default_config():
  out = evaluators.specs(tiny_config().eval.evaluators)
  assert out == {"retrieval": {"kind": "retrieval", "every": 0, "pair": ("image", "text")},
                 "zeroshot": {"kind": "zeroshot", "every": None},
                 "itm": {"kind": "itm", "every": None},
                 "heldout": {"kind": "heldout", "every": None},
                 "fusion": {"kind": "fusion", "every": None},
                 "errors": {"kind": "errors", "every": None}}
  assert all(type(s) is dict for s in out.values())
  assert evaluators.enabled(tiny_config().eval.evaluators) == {
      "retrieval": {"kind": "retrieval", "every": 0, "pair": ("image", "text")}}


def test_turning_one_evaluator_on_leaves_the_others_off():
  # `--config.eval.evaluators.itm.every=-1` turns the ITM heads on, and only them
  # (the periods are not one linked placeholder).
  on = tiny_config(**{"eval.evaluators.itm.every": -1})
  assert evaluators.enabled(on.eval.evaluators) == {
      "retrieval": {"kind": "retrieval", "every": 0, "pair": ("image", "text")},
      "itm": {"kind": "itm", "every": -1}}


@pytest.mark.parametrize("spec, pattern", [
    (-2, r"config.eval.evaluators.retrieval.every=-2: use 0 \(every eval_every\), N > 0 "
         r"\(every N steps\), -1 \(at the end only\) or None \(off\)"),
    ({"kind": "retrieval", "every": -2}, r"retrieval.every=-2: use 0"),
    ({"every": 1.5}, r"retrieval.every=1.5: use 0"),
    ({"every": "0"}, r"retrieval.every='0': use 0"),
    ({"every": True}, r"retrieval.every=True: use 0"),
    (True, r"config.eval.evaluators.retrieval=True: give dict\(kind=..., every=...\)"),
    ("0", r"config.eval.evaluators.retrieval='0': give dict\(kind=..., every=...\)"),
])
def test_specs_reject_bad_periods(spec, pattern):
  with pytest.raises(EvaluatorConfigError, match=pattern):
    evaluators.specs({"retrieval": spec})
  with pytest.raises(EvaluatorConfigError, match=pattern):
    evaluators.due({"retrieval": spec}, 3, 12, eval_every=3)


def test_due_follows_each_period():
  for evs in ({"retrieval": 0, "zeroshot": 4, "itm": -1},  # legacy bare periods
              {"retrieval": {"kind": "retrieval", "every": 0},
               "zeroshot": {"kind": "zeroshot", "every": 4},
               "itm": {"every": -1}}):
    assert evaluators.due(evs, 3, 12, eval_every=3) == ["retrieval"]
    assert evaluators.due(evs, 4, 12, eval_every=3) == ["zeroshot"]
    assert evaluators.due(evs, 5, 12, eval_every=3) == []
    assert evaluators.due(evs, 6, 12, eval_every=3) == ["retrieval"]
    assert evaluators.due(evs, 8, 12, eval_every=3) == ["zeroshot"]
    assert evaluators.due(evs, 12, 12, eval_every=3) == ["retrieval", "zeroshot", "itm"]
    assert evaluators.due({**evs, "itm": None}, 12, 12, eval_every=3) == [
        "retrieval", "zeroshot"]
    assert evaluators.due({**evs, "itm": {"every": None}}, 12, 12, eval_every=3) == [
        "retrieval", "zeroshot"]


def test_due_with_eval_every_zero_and_defaults():
  # every=0 follows eval_every; eval_every=0 means at the end only.
  assert evaluators.due({"retrieval": 0}, 3, 12, eval_every=0) == []
  assert evaluators.due({"retrieval": 0}, 12, 12, eval_every=0) == ["retrieval"]
  # A dict without `every` runs at every eval_every.
  assert evaluators.due({"r": {"kind": "retrieval"}}, 4, 12, eval_every=2) == ["r"]
  assert evaluators.due({"r": {"kind": "retrieval"}}, 5, 12, eval_every=2) == []
  # -1 never before the end, whatever eval_every.
  assert evaluators.due({"itm": -1}, 1, 12, eval_every=1) == []
  config = tiny_config()
  assert evaluators.due(config.eval.evaluators, 3, 6, config.eval_every) == ["retrieval"]
  assert evaluators.due(config.eval.evaluators, 4, 6, config.eval_every) == []
  assert evaluators.due(config.eval.evaluators, 6, 6, config.eval_every) == ["retrieval"]


# --- build_all ------------------------------------------------------------------------


def _build(config, modalities=("image", "text")):
  return evaluators.build_all(config, evaluators.Context.without_data(config), modalities)


def test_build_all_builds_the_enabled_evaluators():
  built = _build(tiny_config())
  assert list(built) == ["retrieval"]
  assert isinstance(built["retrieval"], Retrieval)
  assert built["retrieval"].pair == ("image", "text")
  every = {f"eval.evaluators.{e}.every": -1 for e in ("zeroshot", "itm", "heldout")}
  built = _build(tiny_config(**every))
  assert {k: type(v) for k, v in built.items()} == {
      "retrieval": Retrieval, "zeroshot": shapes_evaluators.ZeroShot,
      "itm": shapes_evaluators.Matching, "heldout": shapes_evaluators.HeldOut}


class Constant:
  """An evaluator of a fork: kwargs from its spec, modalities it declares."""

  def __init__(self, context, value=1.0, modalities=("image",)):
    self.context, self.value, self.modalities = context, value, tuple(modalities)

  def __call__(self, encoders):
    return {"constant": self.value}


def test_build_all_dotted_paths_and_objects_with_kwargs():
  config = tiny_config(**{"eval.evaluators": {
      "dotted": {"kind": "mmjax.eval.retrieval_evaluator.Retrieval", "every": 0,
                 "pair": ("text", "image")},
      "colon": {"kind": "mmjax.eval.retrieval_evaluator:Retrieval", "every": -1},
      "object": {"kind": Constant, "every": 2, "value": 3.0},
      "off": {"kind": "no.such.module.Eval", "every": None}}})  # off: never resolved
  built = _build(config)
  assert list(built) == ["colon", "dotted", "object"]  # a ConfigDict's order: sorted
  assert type(built["dotted"]) is Retrieval and built["dotted"].pair == ("text", "image")
  assert type(built["colon"]) is Retrieval and built["colon"].pair == ("image", "text")
  assert type(built["object"]) is Constant and built["object"].value == 3.0
  assert built["object"](None) == {"constant": 3.0}


_SKETCH = {"data.fields": ("sketch",)}


@pytest.mark.parametrize("overrides, pattern", [
    ({"eval.evaluators.ocr": {"kind": "ocr", "every": 0}},
     r"unknown evaluator kind \(config.eval.evaluators.ocr.kind\) 'ocr'\. Registered: "
     + re.escape(str(sorted(evaluators.EVALUATORS))) + r"; or name your own by its dotted "
     r"path, e.g. 'mypkg.module.ocr'"),
    ({"eval.evaluators.ocr": {"kind": "retreival", "every": 0}},
     r"unknown evaluator kind .*'retreival'\. Did you mean 'retrieval'\?"),
    ({"eval.evaluators.ocr": {"kind": "nonexistent_pkg.evals.Ocr", "every": -1}},
     r"evaluator kind \(config.eval.evaluators.ocr.kind\) 'nonexistent_pkg.evals.Ocr': could "
     r"not import module 'nonexistent_pkg.evals' \(ModuleNotFoundError.*on PYTHONPATH"),
    ({"eval.evaluators.ocr": {"kind": "mmjax.eval.retrieval_evaluator.Ocr", "every": 0}},
     r"module 'mmjax.eval.retrieval_evaluator' was imported but has no attribute 'Ocr'"),
    ({"eval.evaluators.retrieval.pair": ("image", "sketch"), **_SKETCH},
     r"config.eval.evaluators.retrieval evaluates modality 'sketch', but the model has no "
     r"tower for it \(towers: \['image', 'text'\]\); change its pair or add the tower"),
    ({"eval.evaluators.retrieval.every": -2}, r"retrieval.every=-2: use 0"),
    ({"eval.evaluators.retrieval.pair": ("image",)},
     r"retrieval pair=\('image',\) must name two modalities"),
    ({"eval.evaluators.retrieval.pair": ("text", "text")},
     r"both 'text' and 'text' have several rows per image"),
    ({"eval.evaluators.retrieval": {"kind": "retrieval", "every": 0, "pairs": ("a", "b")}},
     r"config.eval.evaluators.retrieval: .*'pairs'.*; remove or rename the keys its kind "
     r"does not take"),
    ({"eval.evaluators.itm": {"kind": "itm", "every": -1, "step": 10}},
     r"the itm evaluator has unknown keys \['step'\]"),
])
def test_config_errors_come_before_anything_compiles(overrides, pattern):
  config = tiny_config(**overrides)
  with no_compiles():
    with pytest.raises(ValueError, match=pattern):
      build.check(config)
  with pytest.raises(ValueError, match=pattern):  # from build_all itself, too
    _build(config)


def test_unknown_kind_is_an_unknown_name_error():
  from mmjax import registry  # pylint: disable=g-import-not-at-top
  with pytest.raises(registry.UnknownNameError):
    _build(tiny_config(**{"eval.evaluators.ocr": {"kind": "ocr", "every": 0}}))


@pytest.mark.parametrize("towers, pair, field", [
    ({"sketch": {"kind": "cnn", "widths": (8,), "blocks_per_stage": 1}},
     ("image", "sketch"), "sketch"),
    ({"drawing": {"kind": "cnn", "widths": (8,), "blocks_per_stage": 1, "input": "sketch"}},
     ("drawing", "image"), "sketch"),
])
def test_a_modality_whose_field_the_test_split_lacks(towers, pair, field):
  config = tiny_config(**{"eval.evaluators.retrieval.pair": pair})
  for name, tower in towers.items():
    config.model.towers[name] = tower
  (modality,) = towers
  with no_compiles():
    with pytest.raises(EvaluatorConfigError, match=(
        rf"config.eval.evaluators.retrieval evaluates modality '{modality}', whose field "
        rf"'{field}' the test split does not hold \(it has \['image', 'text'\]\); add the "
        r"field to config.data.fields, or remove the evaluator")):
      _build(config, modalities=("image", "text", modality))
    # build.check stops at the tower that reads a field batches lack, sooner still.
    with pytest.raises(ValueError, match=rf"reads batch field '{field}'.*config.data.fields"):
      build.check(config)
  # With the field, it builds.
  config.data.fields = (field,)
  built = _build(config, modalities=("image", "text", modality))
  assert built["retrieval"].pair == pair and built["retrieval"].fields == (
      tuple(field if m == modality else m for m in pair))


@pytest.mark.parametrize("kind", ["zeroshot", "itm", "heldout"])
def test_shapes_evaluators_refuse_other_data(kind):
  config = tiny_config(**{"data.name": "coco", "eval.evaluators": {
      "retrieval": 0, kind: {"kind": kind, "every": -1}}})
  assert list(_build(tiny_config(**{"data.name": "coco"}))) == ["retrieval"]
  with no_compiles():
    with pytest.raises(EvaluatorConfigError, match=(
        rf"the '{kind}' evaluator is defined on the shapes dataset's scenes, not 'coco'; "
        "remove it from config.eval.evaluators")):
      _build(config)


# --- Context --------------------------------------------------------------------------


def test_context_without_data_reads_the_config():
  config = tiny_config(**{"data.fields": ("sketch",), "eval.num_images": 7,
                          "eval.batch_size": 5, "seed": 3})
  config.model.towers.drawing = {"kind": "cnn", "input": "sketch"}
  context = evaluators.Context.without_data(config)
  assert context.inputs == {"image": "image", "text": "text", "drawing": "sketch"}
  assert context.fields == ("image", "text", "sketch")
  assert (context.data_name, context.image_size, context.context_length, context.seed,
          context.batch_size, context.num_images) == ("shapes", 16, 24, 3, 5, 7)
  assert context.tokenizer is None
  with pytest.raises(RuntimeError, match="made to check a config; it has no data"):
    context.test  # pylint: disable=pointless-statement


def test_context_loads_the_test_split_once():
  loads = []
  context = evaluators.Context(
      data_name="shapes", image_size=8, context_length=4, seed=0, inputs={}, fields=(),
      batch_size=2, num_images=2,
      load_test=lambda: loads.append(1) or {"image": np.zeros((2, 8, 8, 3))})
  assert loads == []  # not on construction
  first = context.test
  assert context.test is first and loads == [1]


# --- the Retrieval evaluator on hand-made embeddings ----------------------------------


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data(seed=0, n=12, d=6):
  """n images, 1..3 captions each in shuffled order, one sketch per image; noisy
  embeddings, so every direction has its own, imperfect, numbers."""
  rng = np.random.default_rng(seed)
  t2i = rng.permutation(np.repeat(np.arange(n), rng.integers(1, 4, n))).astype(np.int32)
  base = _unit(rng.normal(size=(n, d)))
  emb = {"image": base,
         "text": _unit(base[t2i] + 0.9 * rng.normal(size=(len(t2i), d))),
         "sketch": _unit(base + 0.9 * rng.normal(size=(n, d)))}
  test = {"image": rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8),
          "text": rng.integers(1, 50, (len(t2i), 5), dtype=np.int32),
          "sketch": rng.integers(0, 255, (n, 4, 4, 1), dtype=np.uint8),
          "text_to_image": t2i}
  return test, emb


def _context(test, inputs=None, tokenizer=None):
  fields = tuple(k for k in test if k != "text_to_image")
  return evaluators.Context(
      data_name="shapes", image_size=4, context_length=5, seed=0,
      inputs=inputs or {m: m for m in fields}, fields=fields, batch_size=4,
      num_images=len(test["image"]), tokenizer=tokenizer, load_test=lambda: test)


class TableEncoders:
  """Encoders of hand-made embeddings; checks each modality gets its own field."""

  def __init__(self, context, emb):
    self.context, self.emb, self.calls = context, emb, []

  def encode(self, modality, x):
    field = self.context.inputs[modality]
    assert x is self.context.test[field], (modality, field)
    self.calls.append(modality)
    return self.emb[field]


def _top1(query, gallery, owner_of_gallery, owner_of_query):
  """Fraction of queries whose most similar gallery item is theirs (no ties here)."""
  best = np.argmax(query.astype(np.float64) @ gallery.astype(np.float64).T, axis=1)
  return float(np.mean(owner_of_gallery[best] == owner_of_query))


def test_retrieval_image_text_is_the_contract():
  test, emb = _data()
  context = _context(test)
  evaluator = Retrieval(context)
  assert evaluator.modalities == ("image", "text")
  encoders = TableEncoders(context, emb)
  result = evaluator(encoders)
  assert set(result) == CONTRACT_KEYS
  assert all(type(v) is float for v in result.values())
  assert result == retrieval.retrieval_metrics(emb["image"], emb["text"],
                                               test["text_to_image"])
  assert sorted(encoders.calls) == ["image", "text"]
  n, t2i = len(test["image"]), test["text_to_image"]
  # Independently of retrieval_metrics: which side queries which.
  text_to_image = _top1(emb["text"], emb["image"], np.arange(n), t2i)
  image_to_text = _top1(emb["image"], emb["text"], t2i, np.arange(n))
  assert result["text_to_image_R@1"] == pytest.approx(text_to_image, abs=1e-12)
  assert result["image_to_text_R@1"] == pytest.approx(image_to_text, abs=1e-12)
  assert text_to_image != image_to_text  # else a swap of the names would pass
  assert evaluator.last["image"] is emb["image"] and evaluator.last["text"] is emb["text"]


def test_retrieval_text_image_gives_the_same_numbers_under_the_same_names():
  test, emb = _data()
  context = _context(test)
  forward = Retrieval(context, pair=("image", "text"))(TableEncoders(context, emb))
  backward = Retrieval(context, pair=["text", "image"])(TableEncoders(context, emb))
  assert backward == forward  # text_to_image_* is still text queries, image gallery
  assert set(backward) == CONTRACT_KEYS


def test_retrieval_image_sketch_is_one_to_one():
  test, emb = _data()
  context = _context(test)
  encoders = TableEncoders(context, emb)
  result = Retrieval(context, pair=("image", "sketch"))(encoders)
  assert sorted(encoders.calls) == ["image", "sketch"]
  expected = {k.replace("image_to_text_", "image_to_sketch_")
              .replace("text_to_image_", "sketch_to_image_"): v
              for k, v in retrieval.retrieval_metrics(
                  emb["image"], emb["sketch"], np.arange(12)).items()}
  assert set(expected) == {
      *(f"{d}_R@{k}" for d in ("image_to_sketch", "sketch_to_image") for k in (1, 5, 10)),
      *(f"{d}_{r}_rank" for d in ("image_to_sketch", "sketch_to_image")
        for r in ("mean", "median"))}
  assert result == expected
  n = np.arange(12)
  assert result["image_to_sketch_R@1"] == pytest.approx(
      _top1(emb["image"], emb["sketch"], n, n), abs=1e-12)
  assert result["sketch_to_image_R@1"] == pytest.approx(
      _top1(emb["sketch"], emb["image"], n, n), abs=1e-12)
  assert result["image_to_sketch_R@1"] != result["sketch_to_image_R@1"]
  # The other order: the same numbers under the same names.
  assert Retrieval(context, pair=("sketch", "image"))(TableEncoders(context, emb)) == result


def test_retrieval_names_modalities_not_fields():
  test, emb = _data()
  context = _context(test, inputs={"image": "image", "text": "text", "drawing": "sketch"})
  evaluator = Retrieval(context, pair=("image", "drawing"))
  assert evaluator.fields == ("image", "sketch")
  result = evaluator(TableEncoders(context, emb))
  plain = Retrieval(_context(test), pair=("image", "sketch"))(
      TableEncoders(_context(test), emb))
  assert result == {k.replace("sketch", "drawing"): v for k, v in plain.items()}


def test_retrieval_names_a_pair_whose_first_modality_ends_in_text():
  test, emb = _data()
  context = _context(test, inputs={"image": "image", "text": "text", "context": "sketch"})
  result = Retrieval(context, pair=("context", "image"))(TableEncoders(context, emb))
  plain = Retrieval(_context(test), pair=("sketch", "image"))(
      TableEncoders(_context(test), emb))
  assert result == {k.replace("sketch", "context"): v for k, v in plain.items()}


def test_retrieval_pair_errors():
  context = _context(_data()[0])
  with pytest.raises(EvaluatorConfigError, match=r"pair='image' must name two modalities"):
    Retrieval(context, pair="image")
  with pytest.raises(EvaluatorConfigError, match="must name two modalities"):
    Retrieval(context, pair=("image", "text", "sketch"))
  with pytest.raises(EvaluatorConfigError, match="both 'text' and 'text' have several rows"):
    Retrieval(context, pair=("text", "text"))


def test_rename():
  metrics = {"image_to_text_R@1": 0.5, "text_to_image_mean_rank": 2.0}
  assert retrieval_evaluator.rename(metrics, "image", "text") == metrics
  assert retrieval_evaluator.rename(metrics, "image", "sketch") == {
      "image_to_sketch_R@1": 0.5, "sketch_to_image_mean_rank": 2.0}
  assert retrieval_evaluator.rename(metrics, "sketch", "image") == {
      "sketch_to_image_R@1": 0.5, "image_to_sketch_mean_rank": 2.0}


@pytest.mark.parametrize("a, b", [("text", "image"), ("context", "image")])
def test_rename_renames_each_key_once(a, b):
  metrics = {"image_to_text_R@1": 0.5, "text_to_image_R@1": 0.25}
  assert retrieval_evaluator.rename(metrics, a, b) == {
      f"{a}_to_{b}_R@1": 0.5, f"{b}_to_{a}_R@1": 0.25}


# --- run and format_results ---------------------------------------------------------


class FakeModel:
  towers = {"image": {}, "text": {}}


def test_run_merges_results_and_refuses_clashes():
  evs = {"a": lambda enc: {"a/x": 1.0}, "b": lambda enc: {"b/x": 2.0, "b/y": 3.0},
         "c": lambda enc: {"b/y": 4.0, "a/x": 5.0}}
  assert evaluators.run(evs, ["a", "b"], FakeModel(), {}, 4) == {
      "a/x": 1.0, "b/x": 2.0, "b/y": 3.0}
  assert evaluators.run(evs, [], FakeModel(), {}, 4) == {}
  with pytest.raises(EvaluatorConfigError, match=r"config.eval.evaluators.c writes "
                                                 r"\['a/x', 'b/y'\], which another"):
    evaluators.run(evs, ["a", "b", "c"], FakeModel(), {}, 4)


def test_run_shares_one_encoders_between_evaluators():
  seen = []
  evs = {"a": lambda enc: seen.append(enc) or {}, "b": lambda enc: seen.append(enc) or {}}
  evaluators.run(evs, ["a", "b"], FakeModel(), {"w": np.zeros(2)}, 7)
  assert len(seen) == 2 and seen[0] is seen[1]
  assert isinstance(seen[0], evaluators.Encoders)
  assert seen[0].modalities == ("image", "text") and seen[0].batch_size == 7


def test_format_results_lists_every_metric():
  text = evaluators.format_results({"zeroshot/shape_top1": 0.5, "step": 3, "itm/x/f1": 0.25})
  assert text.splitlines() == ["itm/x/f1             0.2500", "zeroshot/shape_top1  0.5000"]
  assert evaluators.format_results({"step": 3, "count": 7}) == "count  7"


def test_format_results_prints_one_table_per_pair():
  test, emb = _data()
  context = _context(test)
  image_text = Retrieval(context)(TableEncoders(context, emb))
  image_sketch = Retrieval(context, pair=("image", "sketch"))(TableEncoders(context, emb))
  held = {f"heldout/{k}": v for k, v in image_text.items()}
  result = {**image_text, **image_sketch, **held, "heldout/truncated": 0.125,
            "zeroshot/shape_top1": 0.5, "step": 3}
  sketch_as_text = {k.replace("image_to_sketch_", "image_to_text_")
                    .replace("sketch_to_image_", "text_to_image_"): v
                    for k, v in image_sketch.items()}
  lines = evaluators.format_results(result).splitlines()
  assert lines == [
      *retrieval.format_table(image_text).splitlines(),
      "image <-> sketch:",
      *retrieval.format_table(sketch_as_text,
                              labels=("image->sketch", "sketch->image")).splitlines(),
      "heldout/image <-> text:",
      *retrieval.format_table(image_text).splitlines(),
      "heldout/truncated    0.1250",
      "zeroshot/shape_top1  0.5000"]
  # One table per pair: three headers, each direction's row once.
  assert sum(line.split()[:1] == ["R@1"] for line in lines) == 3
  assert sum(line.startswith("image->sketch ") for line in lines) == 1
  assert sum(line.startswith("sketch->image ") for line in lines) == 1
  assert not any("_R@" in line or "_to_" in line for line in lines)
  # The contract alone: its table, no header line.
  assert evaluators.format_results(image_text) == retrieval.format_table(image_text)


def test_format_results_prints_a_lone_direction_as_lines():
  lines = evaluators.format_results({"image_to_sketch_R@1": 0.5}).splitlines()
  assert lines == ["image_to_sketch_R@1  0.5000"]


# --- Encoders of a tiny model ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config()
  model = build.model(config, vocab_size=64, pad_id=0)
  ex = build.example_batch(config, batch_size=1)
  params = jax.jit(lambda rng: state_lib.init_params(model, rng, ex))(jax.random.key(0))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
  tokens = rng.integers(3, 64, (13, 24)).astype(np.int32)
  tokens[:, 10:] = 0
  tokens[2, 4:] = 0
  return config, model, params, images, tokens


def test_encoders_encode_in_fixed_batches(tiny, monkeypatch):
  _, model, params, images, tokens = tiny
  calls = []
  real = evaluators.batched
  monkeypatch.setattr(evaluators, "batched",
                      lambda fn, x, b: calls.append((len(x), b)) or real(fn, x, b))
  enc = evaluators.Encoders(model, params, batch_size=4)
  assert enc.modalities == ("image", "text")
  zimg = enc.encode("image", images)
  ztxt = enc.encode("text", tokens)
  assert zimg.shape == (11, 8) and zimg.dtype == np.float32 and isinstance(zimg, np.ndarray)
  assert ztxt.shape == (13, 8) and ztxt.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1, atol=1e-5)
  apply = lambda method, x: np.asarray(model.apply({"params": params}, x, method=method))
  np.testing.assert_allclose(zimg, apply(model.encode_image, images), atol=1e-5)
  np.testing.assert_allclose(ztxt, apply(model.encode_text, tokens), atol=1e-5)
  assert calls == [(11, 4), (13, 4)]
  # The same array again: computed once; an equal but other array: computed again.
  np.testing.assert_array_equal(enc.encode("image", images), zimg)
  assert len(calls) == 2
  np.testing.assert_array_equal(enc.encode("image", images.copy()), zimg)
  assert len(calls) == 3
  # A fresh Encoders (new params after a step) does not reuse the old results.
  evaluators.Encoders(model, params, batch_size=4).encode("image", images)
  assert len(calls) == 4


def test_encoders_features(tiny):
  _, model, params, images, tokens = tiny
  enc = evaluators.Encoders(model, params, batch_size=4)
  text = enc.features("text", tokens)
  assert set(text) == {"z", "tokens", "mask"}
  assert text["tokens"].shape == (13, 24, 16) and text["z"].shape == (13, 8)
  np.testing.assert_array_equal(text["mask"], tokens != 0)
  np.testing.assert_allclose(text["z"], enc.encode("text", tokens), atol=1e-5)
  image = enc.features("image", images)
  assert set(image) == {"z", "tokens"} and image["tokens"].shape == (11, 4, 16)
  np.testing.assert_allclose(image["z"], enc.encode("image", images), atol=1e-5)
  assert set(enc.features("image", images, tokens=False)) == {"z"}
  with pytest.raises(EvaluatorConfigError, match=r"the model has no tower 'sketch'; "
                                                 r"towers: \('image', 'text'\)"):
    enc.encode("sketch", images)


def test_run_retrieval_on_a_tiny_model(tiny):
  config, model, params, images, tokens = tiny
  test = {"image": images, "text": tokens,
          "text_to_image": np.array([*range(11), 0, 5], np.int32)}
  context = evaluators.Context.without_data(config, load_test=lambda: test)
  built = evaluators.build_all(config, context, ("image", "text"))
  result = evaluators.run(built, ["retrieval"], model, params, batch_size=4)
  enc = evaluators.Encoders(model, params, batch_size=4)
  assert result == retrieval.retrieval_metrics(
      enc.encode("image", images), enc.encode("text", tokens), test["text_to_image"])
  assert set(result) == CONTRACT_KEYS
  assert built["retrieval"].last["image"].shape == (11, 8)


def test_replicated_like():
  assert evaluators.replicated_like({"w": np.zeros(4)}) is None
  mesh = Mesh(np.array(jax.devices()).reshape(-1), ("data",))
  sharded = jax.device_put(np.zeros(8), NamedSharding(mesh, P("data")))
  out = evaluators.replicated_like({"a": np.zeros(2), "b": {"w": sharded}})
  assert isinstance(out, NamedSharding) and out.mesh == mesh and out.spec == P()
