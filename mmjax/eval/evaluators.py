"""Evaluators as plug-ins: what runs, when, on what, and how results come together.

`config.eval.evaluators.<id> = dict(kind=..., every=..., **kwargs)`:

  kind    a name in EVALUATORS or a dotted path to a class or function
  every   0 at every eval_every, N every N steps, -1 at the end only (and in
          python -m mmjax.evaluate), None off

An evaluator kind is called once per run as `kind(context, **kwargs)` and
returns an object with

  modalities            the modalities it encodes (checked against the towers
                        and the test data before anything compiles)
  __call__(encoders)    -> {metric: float}, given an `Encoders` (encode and
                        predict functions of the current params)
  report(workdir)       optional: plots of its last results; called on every
                        process (it may compute sharded), writes from process 0

It gets a `Context` (its data settings, the tokenizer, the test split), never
the whole config. Results of all evaluators are one flat dict: retrieval's
under its contract names, the others under their own prefixes.
"""

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax import registry

# Built-in kinds, as dotted paths: resolved when used, so the shapes-only
# evaluators (beside the shapes data) load only where configured.
EVALUATORS = {
    "retrieval": "mmjax.eval.retrieval_evaluator.Retrieval",
    "zeroshot": "mmjax.data.shapes_evaluators.ZeroShot",
    "heldout": "mmjax.data.shapes_evaluators.HeldOut",
    "errors": "mmjax.data.shapes_errors.RetrievalErrors",
    "itm": "mmjax.data.shapes_evaluators.Matching",
    "audio_zeroshot": "mmjax.eval.audio_zeroshot.AudioZeroShot",
    "fusion": "mmjax.data.shapes_fusion.Fusion",
    "captioning": "mmjax.eval.captioning.Captioning",
    "caption_likelihood": "mmjax.eval.likelihood.CaptionLikelihood",
}
SPEC_KEYS = ("kind", "every")


class EvaluatorConfigError(ValueError):
  """An evaluator that cannot run on this model or data; the message says what to change."""


@dataclasses.dataclass
class Context:
  """What an evaluator may read, besides the model.

  data_name, image_size, context_length, seed: the data settings.
  inputs: {modality: test-data field it reads} (the towers' inputs).
  fields: the modality fields the test split holds.
  tokenizer: the run's tokenizer (None while only checking a config).
  batch_size: rows per encoder call; num_images: config.eval.num_images.
  test_split_size: images in the whole test split when known without reading
    it (shapes: always; a prepared dataset: when build.check passes it in),
    else None. Evaluators check what they can of it at construction.
  load_test: () -> the test split {field: [N or M, ...], "text_to_image": [M],
    ...}, loaded once, on first use.
  """

  data_name: str
  image_size: int
  context_length: int
  seed: int
  inputs: Mapping[str, str]
  fields: tuple
  batch_size: int
  num_images: int
  tokenizer: Any = None
  load_test: Callable[[], dict] | None = None
  test_split_size: int | None = None

  @functools.cached_property
  def test(self) -> dict:
    if self.load_test is None:
      raise RuntimeError("this Context was made to check a config; it has no data.")
    return self.load_test()

  @property
  def eval_images(self) -> int | None:
    """N, the test images evaluated (the first num_images, all for -1), or
    None when the split's size is not known without reading it."""
    if self.test_split_size is None:
      return None
    if self.num_images == -1:
      return self.test_split_size
    return min(self.num_images, self.test_split_size)

  @classmethod
  def without_data(cls, config, tokenizer=None, load_test=None,
                   test_split_size: int | None = None) -> "Context":
    from mmjax.data import pipeline  # pylint: disable=g-import-not-at-top
    if test_split_size is None and config.data.name == "shapes":
      # Known without reading anything; a prepared dataset's needs its index opened.
      test_split_size = pipeline.test_split_size(config.data)
    return cls(data_name=config.data.name, image_size=config.data.image_size,
               context_length=config.data.context_length, seed=config.seed,
               inputs={m: t.get("input", m) for m, t in config.model.towers.items()},
               fields=tuple(pipeline.test_fields(config.data)),
               batch_size=config.eval.batch_size, num_images=config.eval.num_images,
               tokenizer=tokenizer, load_test=load_test, test_split_size=test_split_size)

  @classmethod
  def for_run(cls, config, tokenizer) -> "Context":
    from mmjax.data import pipeline  # pylint: disable=g-import-not-at-top
    return cls.without_data(config, tokenizer,
                            load_test=lambda: pipeline.test_data(config, tokenizer))


# --- running the model on arrays -------------------------------------------------

def batched(fn: Callable, x, batch_size: int, multiple_of: int = 1):
  """Applies fn to fixed-size batches of x (the last one padded), so it compiles once.

  x: [N, ...]; fn maps [b, ...] to an array or a dict of arrays [b, ...].
  multiple_of: the batch is rounded up to a multiple of it (the number of
  shards of a batch split over devices), padding if need be.
  Returns the same structure, NumPy, over all N rows.
  """
  n = len(x)
  size = min(batch_size, n)  # a split smaller than one batch: no padding
  size = -(-size // multiple_of) * multiple_of
  chunks = []
  for start in range(0, n, size):
    chunk = x[start:start + size]
    pad = size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    chunks.append(jax.tree.map(lambda a: np.asarray(a)[:size - pad], fn(chunk)))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *chunks)


def replicated_like(params):
  """Replicated on the params' mesh when they are sharded there, else None.

  Evaluation batches are small next to training batches, so inputs and
  outputs are replicated; the params stay however training sharded them
  (over fsdp / tensor) and XLA gathers what each matmul needs.
  """
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return NamedSharding(sharding.mesh, P())
  return None


_BUILT: dict = {}


def jitted_once(key, make: Callable):
  """make() -> a jitted function, built once per hashable key (model and
  options; make itself is not part of the key, as a new lambda each call
  would be): an evaluator that runs every eval_every steps compiles once."""
  if key not in _BUILT:
    if len(_BUILT) >= 16:  # a bound, as an lru_cache has: drop the oldest
      _BUILT.pop(next(iter(_BUILT)))
    _BUILT[key] = make()
  return _BUILT[key]


@functools.lru_cache(maxsize=32)
def _jitted(model, method: str, modality: str, tokens: bool, sharding):
  def run(params, x):
    kwargs = {"tokens": tokens} if method == "features" else {}
    return model.apply({"params": params}, x, modality, method=getattr(model, method),
                       **kwargs)

  return jax.jit(run) if sharding is None else jax.jit(run, out_shardings=sharding)


class Encoders:
  """The model's encode and predict functions at fixed params, for evaluators.

  encode(modality, x): [N, ...] of the tower's input -> [N, D] float32 unit norm.
  features(modality, x, tokens=True): {"z": [N, D], "tokens": [N, T, W],
    "mask": [N, T] (towers with a pad_id)} NumPy.
  Encodings of one array are computed once per Encoders (evaluators that
  share the test images share their embeddings).
  model, params: for evaluators that train on top of the model (ITM heads).
  """

  def __init__(self, model, params, batch_size: int):
    self.model, self.params, self.batch_size = model, params, batch_size
    self.modalities = tuple(model.towers)
    self._sharding = replicated_like(params)
    self._cache = {}

  def _run(self, method: str, modality: str, x, tokens: bool = False):
    if modality not in self.modalities:
      raise EvaluatorConfigError(f"the model has no tower {modality!r}; towers: "
                                 f"{self.modalities}.")
    key = (method, modality, tokens, id(x))
    if key not in self._cache:
      fn = _jitted(self.model, method, modality, tokens, self._sharding)
      put = ((lambda a: a) if self._sharding is None
             else (lambda a: jax.device_put(a, self._sharding)))
      # x is kept alive with its result, so its id cannot be reused meanwhile.
      self._cache[key] = (x, batched(lambda c: fn(self.params, put(c)), np.asarray(x),
                                     self.batch_size))
    return self._cache[key][1]

  def encode(self, modality: str, x) -> np.ndarray:
    return self._run("encode", modality, x).astype(np.float32)

  def features(self, modality: str, x, tokens: bool = True) -> dict:
    return self._run("features", modality, x, tokens)


# --- building and scheduling -------------------------------------------------------

def specs(evaluators: Mapping[str, Any]) -> dict[str, dict]:
  """{id: spec dict} of config.eval.evaluators; a bare period (int or None)
  is the built-in evaluator of that id (`evaluators.retrieval = 0`)."""
  out = {}
  for eid, spec in evaluators.items():
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool)):
      spec = {"kind": eid, "every": spec}
    elif hasattr(spec, "to_dict"):
      spec = spec.to_dict()
    elif hasattr(spec, "items"):
      spec = dict(spec)
    else:
      raise EvaluatorConfigError(
          f"config.eval.evaluators.{eid}={spec!r}: give dict(kind=..., every=...).")
    spec.setdefault("kind", eid)
    spec.setdefault("every", 0)
    every = spec["every"]
    if every is not None and (not isinstance(every, int) or isinstance(every, bool)
                              or every < -1):
      raise EvaluatorConfigError(
          f"config.eval.evaluators.{eid}.every={every!r}: use 0 (every eval_every), N > 0 "
          "(every N steps), -1 (at the end only) or None (off).")
    out[eid] = spec
  return out


def enabled(evaluators: Mapping[str, Any]) -> dict[str, dict]:
  """The specs of the evaluators that are on."""
  return {eid: s for eid, s in specs(evaluators).items() if s["every"] is not None}


def build_all(config, context: Context, modalities: tuple) -> dict[str, Any]:
  """{id: evaluator} of every enabled evaluator, each checked against the
  model's towers (`modalities`) and the test data's fields."""
  out = {}
  for eid, spec in enabled(config.eval.evaluators).items():
    kwargs = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    kind = registry.resolve(spec["kind"], EVALUATORS,
                            f"evaluator kind (config.eval.evaluators.{eid}.kind)")
    if isinstance(kind, str):
      kind = registry.import_path(kind, f"evaluator {spec['kind']!r}")
    try:
      evaluator = kind(context, **kwargs)
    except TypeError as e:
      raise EvaluatorConfigError(f"config.eval.evaluators.{eid}: {e}; remove or rename "
                                 "the keys its kind does not take.") from e
    for m in getattr(evaluator, "modalities", ()):
      if m not in modalities:
        raise EvaluatorConfigError(
            f"config.eval.evaluators.{eid} evaluates modality {m!r}, but the model has no "
            f"tower for it (towers: {list(modalities)}); change its pair or add the tower.")
      field = context.inputs.get(m, m)
      if field not in context.fields:
        raise EvaluatorConfigError(
            f"config.eval.evaluators.{eid} evaluates modality {m!r}, whose field {field!r} "
            f"the test split does not hold (it has {list(context.fields)}); add the field "
            "to config.data.fields, or remove the evaluator.")
    out[eid] = evaluator
  return out


def due(evaluators: Mapping[str, Any], step: int, total: int, eval_every: int) -> list[str]:
  """The ids of the evaluators to run after `step` of `total`."""
  names = []
  for eid, spec in enabled(evaluators).items():
    period = eval_every if spec["every"] == 0 else spec["every"]
    if step == total or (period > 0 and step % period == 0):
      names.append(eid)
  return names


def run(evaluators: Mapping[str, Any], ids, model, params, batch_size: int) -> dict:
  """Runs evaluators `ids` on `params`; one flat dict of their metrics."""
  encoders = Encoders(model, params, batch_size)
  metrics = {}
  for eid in ids:
    result = evaluators[eid](encoders)
    if clash := sorted(set(result) & set(metrics)):
      raise EvaluatorConfigError(f"config.eval.evaluators.{eid} writes {clash}, which another "
                                 "evaluator wrote already; give it other names (a prefix).")
    metrics.update(result)
  return metrics


def format_results(result: dict) -> str:
  """Retrieval tables (every "<a>_to_<b>_R@1" pair found), then every other
  metric on a line."""
  from mmjax.eval import retrieval  # pylint: disable=g-import-not-at-top
  lines, tabled = [], set()
  # Unprefixed tables (the contract's (image, text) first) before prefixed ones.
  for key in sorted(result, key=lambda k: ("/" in k, not k.startswith("image_to_text"), k)):
    if not key.endswith("_R@1") or "_to_" not in key:
      continue
    prefix, rest = key[:key.rfind("/") + 1], key[key.rfind("/") + 1:-len("_R@1")]
    a, b = rest.split("_to_", 1)
    names = {f"{prefix}{a}_to_{b}_": "image_to_text_", f"{prefix}{b}_to_{a}_": "text_to_image_"}
    if any(n + "R@1" in tabled for n in names) or f"{prefix}{b}_to_{a}_R@1" not in result:
      continue
    # Only the keys the table shows (R@K, mean and median rank); others of
    # the same prefix (e.g. likelihood/..._recall_in_top_k) print on a line.
    shown = re.compile(r"(R@\d+|mean_rank|median_rank)$")
    sub = {names[n] + k[len(n):]: v for n in names for k, v in result.items()
           if k.startswith(n) and shown.fullmatch(k[len(n):])}
    tabled.update(k for n in names for k in result
                  if k.startswith(n) and shown.fullmatch(k[len(n):]))
    if prefix or (a, b) != ("image", "text"):
      lines.append(f"{prefix}{a} <-> {b}:")
    lines.append(retrieval.format_table(sub, labels=(f"{a}->{b}", f"{b}->{a}")))
  others = sorted(k for k in result if k not in tabled and k != "step")
  width = max((len(k) for k in others), default=0)
  for key in others:
    value = result[key]
    lines.append(f"{key:<{width}}  {value:.4f}" if isinstance(value, float)
                 else f"{key:<{width}}  {value}")
  return "\n".join(lines)
