"""Image-text matching (ITM): a binary head on the towers that says whether an
image and a caption match, trained and scored on mined hard negatives.

Data: {"image": [N, H, W, C], "text": int [M, L], "text_to_image": int [M],
"group": int [N] (optional)}, as `pipeline.test_data`. Images of one group are
interchangeable (on shapes: the same scene), so a caption matches every image
of its image's group; by default each image is its own group.

Pairs (`make_pairs`, the same for training and test): every (image, caption)
is a positive and gets one negative, so classes are balanced. A seeded coin
per positive swaps either its caption, for a hard-negative caption of the
image, or its image, for a hard-negative image of the caption. A hard negative
is drawn uniformly from the `top_k` items most similar to the query by the
contrastive similarity zimg . ztxt, among other groups only: never a true
match, nor a paraphrase of a duplicate scene (which would be the most similar
"negative" of all). A fraction `easy_fraction` is drawn uniformly from all
other groups instead. Draws are keyed by (seed, side, positive index), so a
model's test pairs are fixed; but they are that model's own hard negatives, and
two models are each scored on theirs. Hardness grows with the gallery mined
(more images, closer neighbours), so training mines within pools of images the
size of the test split.

Training (`train_head`): with frozen towers (the default) the towers' outputs
on the train data are computed once, pairs mined once on them, and the head
trained with Adam on the binary cross-entropy of shuffled minibatches
(`fit_minibatches`, the loop mmjax.train.fusion's classifiers share; their
features come from `modality_features`, of which tower_features is the
image-text case). With freeze_towers=False the towers train too, and
negatives are mined within each batch from the current embeddings (ALBEF's
in-batch mining).

Metrics (`evaluate_head`): accuracy, precision, recall and F1 of logit > 0,
and ROC AUC, as "itm/<kind>/<metric>". A trained head is stored in the params
tree under "itm_<kind>", beside the towers' params.
"""

import functools
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.eval.evaluators import batched, replicated_like
from mmjax.eval.pairs import binary_metrics, make_pairs, sample_hard_negatives
from mmjax.models import registry as model_registry
from mmjax.models.heads.fusion import NEEDS_TOKENS, make_head
from mmjax.models.heads.matching import MatchingHead

IMAGE_KEYS = ("zimg", "image_tokens")
TEXT_KEYS = ("ztxt", "text_tokens", "text_mask")
# A linear head moves its logit by ~lr * |feature| per Adam step, and its
# features (products of unit vectors' coordinates) are small: it needs a
# larger step than the MLP and attention heads to reach useful logits.
DEFAULT_LR = {"concat_mlp": 1e-3, "weighted_sum": 1e-2, "cross_attention": 1e-3}
# run_itm's settings; config.eval.itm (a dict, optional) overrides any of them.
ITM_DEFAULTS = {"num_train": 2000, "steps": 1000, "batch_size": 256, "top_k": 16,
                "easy_fraction": 0.0}
# Test pairs do not depend on the training seed: reruns compare.
TEST_SEED = 0


# --- tower outputs -------------------------------------------------------------

def head_key(kind: str) -> str:
  """Where head `kind` lives in a params tree: "itm_<kind>"."""
  make_head(kind)  # unknown kinds fail here, listing the known ones
  return f"itm_{kind}"


def tower_params(params: Mapping) -> dict:
  """The model's own params: the tree without its ITM heads."""
  return {k: v for k, v in params.items() if not str(k).startswith("itm_")}


def load_head(params: Mapping, kind: str):
  """The params of head `kind` from a params tree (or a {"params": ...} dict);
  ValueError naming the missing head and how to get it."""
  key = head_key(kind)
  tree = params["params"] if "params" in params and key not in params else params
  if key not in tree:
    have = sorted(k for k in tree if str(k).startswith("itm_")) or "none"
    raise ValueError(
        f"this checkpoint has no ITM head {kind!r} (no {key!r} in its params; ITM "
        f"heads it has: {have}); train it with mmjax.train.matching.train_head("
        f"{kind!r}, model, params, train_data), which returns the params with the head "
        f"under {key!r}.")
  return tree[key]


def model_head(model, params: Mapping, name: str = "itm") -> tuple[str, dict, dict]:
  """The model's own ITM head `name` (config.model.heads.<name>, kind "itm",
  trained in the train step), as the fusion head it wraps.

  params: the model's params (or a {"params": ...} dict), holding the head
  under "<name>_head".
  Returns (fusion kind, its params, head_cfg): what head_logits and
  evaluate_head take, so the head scores the same pairs as one trained here.
  ValueError naming the fix when the model or its params have no such head,
  or it does not match images with captions.
  """
  heads = dict(getattr(model, "heads", None) or {})
  spec = dict(heads.get(name) or {})
  cls = model_registry.head_class(spec.pop("kind", None), name) if name in heads else None
  if not (isinstance(cls, type) and issubclass(cls, MatchingHead)):
    found = ("has no ITM head" if cls is None
             else f"has a {getattr(cls, '__name__', cls)}, not an ITM head, as head")
    raise ValueError(
        f"the model {found} {name!r} (heads: {sorted(heads)}); add "
        f"config.model.heads.{name} = dict(kind='itm', fusion='concat_mlp') and its loss "
        f"term (binary_cross_entropy on {name}/logits, {name}/labels), or score heads "
        "trained on the frozen towers instead (the itm evaluator without trained_head).")
  # As MultiTower builds it: the model's compute dtype unless the spec sets one.
  spec.setdefault("dtype", getattr(model, "dtype", "float32"))
  head = cls(**spec)
  if tuple(head.pair) != ("image", "text"):
    raise ValueError(f"ITM head {name!r} matches {tuple(head.pair)}, not (image, text) "
                     "pairs; only an image-text head scores the itm evaluator's pairs.")
  tree = params["params"] if "params" in params and f"{name}_head" not in params else params
  children = dict(tree.get(f"{name}_head") or {})
  if len(children) != 1:
    raise ValueError(
        f"the params have {sorted(children) or 'nothing'} under {name + '_head'!r}, not the "
        f"one fusion head ITM head {name!r} holds; evaluate the checkpoint of a model "
        "trained with that head.")
  (head_params,) = children.values()
  return head.fusion, head_params, {**dict(head.options), "dtype": head.dtype}


def encode_tokens(model, variables, images=None, tokens=None) -> dict:
  """The image and text towers' pooled and token outputs (model.features):
  {"zimg", "image_tokens"} for images and {"ztxt", "text_tokens", "text_mask"}
  for tokens."""
  out = {}
  if images is not None:
    f = model.apply(variables, images, "image", method=model.features)
    out.update(zimg=f["z"], image_tokens=f["tokens"])
  if tokens is not None:
    f = model.apply(variables, tokens, "text", method=model.features)
    out.update(ztxt=f["z"], text_tokens=f["tokens"], text_mask=f["mask"])
  return out


@functools.lru_cache(maxsize=16)
def _encoder(model, modality: str, tokens: bool, sharding):
  def encode(params, x):
    return model.apply({"params": params}, x, modality, tokens=tokens, method=model.features)

  return jax.jit(encode) if sharding is None else jax.jit(encode, out_shardings=sharding)


def modality_features(model, params, inputs: Mapping, *, tokens: bool = True,
                      batch_size: int = 256) -> dict[str, np.ndarray]:
  """The frozen towers' outputs (model.features) on each modality's inputs,
  in fixed-size batches, for heads trained on top of them.

  params: the model's params (heads in the tree are ignored); inputs:
  {modality: [N_m, ...] of its tower's input field}.
  Returns {"z/<m>": [N_m, D]} float32 and, with tokens, "tokens/<m>"
  [N_m, T, W] float32 and, for towers that pad, "mask/<m>" [N_m, T] bool:
  MultiTower's output names, which the fusion_n heads read.
  """
  params = tower_params(params)
  sharding = replicated_like(params)
  put = (lambda x: x) if sharding is None else (lambda x: jax.device_put(x, sharding))
  out = {}
  for modality, x in inputs.items():
    fn = _encoder(model, modality, tokens, sharding)
    feats = batched(lambda c: fn(params, put(c)), np.asarray(x), batch_size)
    out.update({f"{k}/{modality}": v if v.dtype == bool else v.astype(np.float32)
                for k, v in feats.items()})
  return out


# modality_features' names -> the ITM heads' (fusion.py's feats).
_ITM_NAMES = {"z/image": "zimg", "tokens/image": "image_tokens", "z/text": "ztxt",
              "tokens/text": "text_tokens", "mask/text": "text_mask"}


def tower_features(model, params, data: Mapping, *, tokens: bool = True,
                   batch_size: int = 256) -> dict[str, np.ndarray]:
  """The image and text towers' outputs on data (see the module docstring).

  Returns {"zimg": [N, D], "ztxt": [M, D]} float32 and, with tokens,
  "image_tokens" [N, P, W_img], "text_tokens" [M, L, W_txt] float32 and
  "text_mask" [M, L] bool (as encode_tokens).
  """
  feats = modality_features(model, params, {"image": data["image"], "text": data["text"]},
                            tokens=tokens, batch_size=batch_size)
  return {_ITM_NAMES[k]: v for k, v in feats.items() if k in _ITM_NAMES}


def _gather(feats: Mapping, image, text) -> dict:
  """Per-pair features: image-side keys at `image`, text-side keys at `text`."""
  out = {k: feats[k][image] for k in IMAGE_KEYS if k in feats}
  out.update({k: feats[k][text] for k in TEXT_KEYS if k in feats})
  return out


def _head_features(kind: str, feats: Mapping) -> dict:
  """The features head `kind` reads, on device (only those: the pooled heads
  need not gather token sequences at every step)."""
  if kind not in NEEDS_TOKENS:
    return {k: jnp.asarray(feats[k]) for k in ("zimg", "ztxt")}
  if "image_tokens" not in feats:
    raise ValueError(f"the {kind!r} head reads token sequences; compute the features "
                     "with tower_features(..., tokens=True).")
  return {k: jnp.asarray(v) for k, v in feats.items()}


# --- training and evaluation ----------------------------------------------------

def _group(data: Mapping) -> np.ndarray:
  return np.asarray(data["group"]) if "group" in data else np.arange(len(data["image"]))


def train_head(kind: str, model, params, train_data: Mapping, *, steps: int = 1000,
               batch_size: int = 256, lr: float | None = None, seed: int = 0,
               freeze_towers: bool = True, head_cfg: Mapping | None = None,
               top_k: int = 16, easy_fraction: float = 0.0, pool: int | None = None,
               features=None) -> dict:
  """Trains ITM head `kind` on train_data (see the module docstring).

  params: the model's params; lr: Adam's step (default DEFAULT_LR[kind]);
  head_cfg: attributes of the head (fusion.make_head); top_k, easy_fraction,
  pool: as in make_pairs (with trained towers the batch is the pool);
  features: precomputed `tower_features(model, params, train_data)`, shared
  between heads (frozen towers only).
  Returns the params tree with the head under "itm_<kind>" (and, with
  freeze_towers=False, the trained towers in place of the given ones).
  """
  head = make_head(kind, **dict(head_cfg or {}))
  lr = DEFAULT_LR[kind] if lr is None else lr
  tx = optax.adam(lr)
  if not freeze_towers:
    towers, head_params = _train_with_towers(head, tx, model, tower_params(params), train_data,
                                             steps=steps, batch_size=batch_size, seed=seed,
                                             top_k=top_k)
    return {**dict(params), **towers, head_key(kind): head_params}

  if features is None:
    features = tower_features(model, params, train_data, tokens=kind in NEEDS_TOKENS)
  feats = _head_features(kind, features)  # on device once
  pairs = make_pairs(features["zimg"], features["ztxt"], train_data["text_to_image"],
                     _group(train_data), top_k=top_k, seed=seed, easy_fraction=easy_fraction,
                     pool=pool)

  def loss_fn(p, data, index):
    logits = head.apply({"params": p}, _gather(data["feats"], data["image"][index],
                                               data["text"][index]))
    return optax.sigmoid_binary_cross_entropy(logits, data["label"][index]).mean()

  head_params = nn.meta.unbox(head.init(jax.random.key(seed),
                                        _gather(feats, pairs["image"][:1], pairs["text"][:1])))
  data = {"feats": feats, **{k: jnp.asarray(pairs[k]) for k in ("image", "text", "label")}}
  head_params = fit_minibatches(loss_fn, head_params["params"], data, len(pairs["label"]), tx,
                                steps=steps, batch_size=batch_size, seed=seed)
  return {**dict(params), head_key(kind): head_params}


def fit_minibatches(loss_fn, params, data, num_examples: int, tx, *, steps: int,
                    batch_size: int, seed: int):
  """`steps` updates of `tx` on loss_fn over shuffled minibatches of the
  examples 0 .. num_examples - 1: the training loop of the heads on frozen
  towers (ITM here, the fusion classifiers in mmjax.train.fusion).

  loss_fn(params, data, index) -> scalar: the loss of examples `index` (int32
  [b]); data: a pytree of arrays over all examples, on device once and passed
  to the jitted step as an argument (not baked into the program as a
  constant). A fresh shuffle (np.random.default_rng(seed)) every epoch; every
  batch full (batch_size at most num_examples). Returns the trained params.
  """
  @jax.jit
  def step(params, opt_state, data, index):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params, data, index), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = jax.jit(tx.init)(params)  # eagerly, each leaf's zeros would compile an op
  rng = np.random.default_rng(seed)
  n = num_examples
  batch_size = min(batch_size, n)
  order, cursor = rng.permutation(n), 0
  for _ in range(steps):
    if cursor + batch_size > n:
      order, cursor = rng.permutation(n), 0
    index = order[cursor:cursor + batch_size].astype(np.int32)
    cursor += batch_size
    params, opt_state = step(params, opt_state, data, index)
  return params


def _train_with_towers(head, tx, model, towers, data, *, steps, batch_size, seed, top_k):
  """Head and towers trained together; negatives mined in each batch. Returns
  (tower params, head params)."""
  t2i = np.asarray(data["text_to_image"])
  group = _group(data)
  key = jax.random.key(seed)

  def loss_fn(params, images, tokens, groups, step_key):
    out = encode_tokens(model, {"params": params["towers"]}, images, tokens)
    b = len(groups)
    rows = jnp.arange(b)
    sim = jax.lax.stop_gradient(out["zimg"] @ out["ztxt"].T)  # [B, B]; diagonal = positives
    same = groups[:, None] == groups[None, :]
    keys = lambda s: jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(step_key, s), rows)
    neg_text, ok_text = sample_hard_negatives(keys(0), sim, same, top_k)
    neg_image, ok_image = sample_hard_negatives(keys(1), sim.T, same.T, top_k)
    swap_text = jax.random.bernoulli(jax.random.fold_in(step_key, 2), 0.5, (b,))
    image = jnp.concatenate([rows, jnp.where(swap_text, rows, neg_image)])
    text = jnp.concatenate([rows, jnp.where(swap_text, neg_text, rows)])
    label = jnp.concatenate([jnp.ones(b), jnp.zeros(b)])
    weight = jnp.concatenate([jnp.ones(b), jnp.where(swap_text, ok_text, ok_image)])
    logits = head.apply({"params": params["head"]}, _gather(out, image, text))
    loss = optax.sigmoid_binary_cross_entropy(logits, label)
    return (loss * weight).sum() / weight.sum()

  @jax.jit
  def step(params, opt_state, images, tokens, groups, step_key):
    grads = jax.grad(loss_fn)(params, images, tokens, groups, step_key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  batch_size = min(batch_size, len(t2i))
  pick = lambda: rng.choice(len(t2i), batch_size, replace=False)
  shapes = jax.eval_shape(functools.partial(encode_tokens, model),
                          {"params": towers}, data["image"][:1], data["text"][:1])
  example = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  params = {"towers": towers, "head": nn.meta.unbox(head.init(key, example))["params"]}
  opt_state = tx.init(params)
  for s in range(steps):
    j = pick()
    params, opt_state = step(params, opt_state, data["image"][t2i[j]], data["text"][j],
                             group[t2i[j]], jax.random.fold_in(key, s))
  return params["towers"], params["head"]


def head_logits(kind: str, head_params, features: Mapping, pairs: Mapping, *,
                head_cfg: Mapping | None = None, batch_size: int = 512) -> np.ndarray:
  """Logits [P] of head `kind` on `pairs` (make_pairs) of `features` (tower_features)."""
  head = make_head(kind, **dict(head_cfg or {}))
  feats = _head_features(kind, features)
  fn = jax.jit(lambda p, i, t: head.apply({"params": p}, _gather(feats, i, t)))
  index = np.stack([pairs["image"], pairs["text"]], axis=1)
  return batched(lambda c: fn(head_params, c[:, 0], c[:, 1]), index, batch_size)


def evaluate_head(kind: str, model, params, test_data: Mapping, *,
                  head_cfg: Mapping | None = None, seed: int = TEST_SEED, top_k: int = 16,
                  easy_fraction: float = 0.0, batch_size: int = 256,
                  features=None) -> dict[str, float]:
  """Scores head `kind` (from params["itm_<kind>"]) on test_data's pairs.

  features: precomputed tower_features(model, params, test_data) (optional).
  Returns {"itm/<kind>/accuracy", ".../precision", ".../recall", ".../f1",
  ".../auc"}: floats, threshold 0 on the logit.
  """
  head_params = load_head(params, kind)
  if features is None:
    features = tower_features(model, params, test_data, tokens=kind in NEEDS_TOKENS,
                              batch_size=batch_size)
  pairs = make_pairs(features["zimg"], features["ztxt"], test_data["text_to_image"],
                     _group(test_data), top_k=top_k, seed=seed, easy_fraction=easy_fraction)
  logits = head_logits(kind, head_params, features, pairs, head_cfg=head_cfg)
  return {f"itm/{kind}/{k}": v for k, v in binary_metrics(logits, pairs["label"]).items()}
