"""The multi-tower model: one tower per modality, each projected into one
L2-normalised space, plus optional heads over the towers' outputs.

An image-text CLIP/SigLIP model is `towers = {image: ..., text: ...}`; a third
modality is a third entry. Parameters live under `<modality>_tower` and
`<modality>_proj` (so image-text runs keep the parameter paths of earlier
mmjax versions), the heads under `<name>_head`, and the shared temperature and
bias under `log_scale` and `bias`.

Outputs of `__call__(batch)`, namespaced so that nothing overwrites another:

  z/<m>          [B, D] float32, unit norm, for every modality m
  tokens/<m>     [B, T, W] the tower's sequence, for modalities a head reads
  mask/<m>       [B, T] bool, True on real tokens (towers with a pad_id)
  scale, bias    [] float32, the learned logit scale and bias (bias 0 without one)
  scale/<a>/<b>, bias/<a>/<b>   the same, for each pair in pair_scales
  <head>/<key>   whatever head <head> returns; a head whose __call__ takes a
                 `batch` parameter gets the batch too (a caption decoder's targets)
  to_teacher     [D, D_t], with teacher_dim (see mmjax/train/teacher.py)
  log_var/<t>    [] float32, loss term t's learned log-variance (task_log_vars)
"""

import inspect
import math
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
from flax.core import FrozenDict

from mmjax import registry as names
from mmjax.models import layers
from mmjax.models import registry
from mmjax.models.layers import logical

# Keys of a tower spec that the MultiTower reads itself; the rest are the tower's.
TOWER_KEYS = ("kind", "input", "proj", "proj_bias", "pixel_mean", "pixel_std", "features")

# Output namespaces the model writes; a head may not be named like one.
RESERVED = ("z", "tokens", "mask", "scale", "bias", "teacher", "to_teacher", "log_var")


def l2_normalize(x, eps=1e-6):
  """x: [..., D] -> float32 [..., D] of unit norm (eps keeps a zero vector finite)."""
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def tower_input(x, mean=None, std=None):
  """uint8 pixels [0, 255] -> float (x / 255 - mean) / std per channel, by
  default [-1, 1] (mean = std = 0.5); anything else passes unchanged.

  Normalising on the device lets the input pipeline ship uint8: 4x fewer bytes.
  A released model keeps its family's mean and std (CLIP's are not 0.5).
  """
  if x.dtype == jnp.uint8:
    if mean is None:
      return x.astype(jnp.float32) * (2 / 255) - 1
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    x = (x.astype(jnp.float32) / 255 - mean) / std
  return x


def _identity(x):
  return x


def feature_stage(spec, modality: str):
  """The tower spec's `features` entry -> a function of the input field, or None.

  `features=dict(fn="mmjax.data.audio.log_mel", sample_rate=16000, n_fft=400,
  ...)`: fn is a dotted path to a function `fn(x, **rest)`, applied on the
  device inside the model, so training, evaluation and `encode` all see the
  same features, and the input pipeline ships the raw signal. It is named by
  a path, not imported here: models do not import the data package.
  """
  if not spec:
    return None
  spec = dict(spec)
  path = spec.pop("fn", None)
  if not isinstance(path, str):
    raise ValueError(f"config.model.towers.{modality}.features needs fn='pkg.module.name', "
                     f"the function that computes the features, got fn={path!r}.")
  fn = names.import_path(path, f"feature function (config.model.towers.{modality}.features)")
  return lambda x: fn(x, **spec)


def _with_dtype(cls, spec: dict, dtype: str) -> dict:
  """spec with the model's compute dtype, where the class takes one and spec sets none."""
  if "dtype" in getattr(cls, "__dataclass_fields__", {}):
    spec.setdefault("dtype", dtype)
  return spec


def pair_name(pair) -> str:
  a, b = pair
  return f"{a}/{b}"


class MultiTower(nn.Module):
  """Towers keyed by modality, their projections, heads, scale and bias.

  Attributes:
    towers: modality -> tower spec: `kind` (registry.TOWERS name or dotted
      path), optional `input` (the batch key it reads; default the modality
      name), `proj` (default True: a Dense into the shared space; False: the
      pooled features are the embedding, as SigLIP's image tower) and
      `proj_bias` (default False; True for big_vision's `head`), `pixel_mean`
      and `pixel_std` (per-channel, for uint8 images; default 0.5, 0.5: [-1,
      1]), the rest the tower's attributes.
    heads: head name -> spec: `kind` (registry.HEADS or dotted path) and attributes.
    embed_dim: size D of the shared space.
    temperature_init: initial logit scale (> 0): CLIP 1/0.07, SigLIP 10;
      learned as its logarithm, clipped at max_temperature.
    bias_init: initial logit bias (SigLIP -10); None: no bias, outputs 0.
    pair_scales: pairs (a, b) that get a scale and bias of their own.
    dtype: compute dtype of towers and heads; embeddings, scale, bias float32.
    teacher_dim: None, or the size D_t of a distillation teacher's space: the
      model then learns `to_teacher` [D, D_t] (for mse_to_teacher).
    task_log_vars: loss term ids that learn a log-variance `log_var_<id>`
      (output log_var/<id>), for config.loss.weighting="uncertainty".
  """

  towers: Mapping[str, Mapping[str, Any]]
  heads: Mapping[str, Mapping[str, Any]] = FrozenDict()
  embed_dim: int = 512
  temperature_init: float = 10.0
  max_temperature: float = 100.0
  bias_init: float | None = -10.0
  pair_scales: tuple = ()
  dtype: str = "float32"
  teacher_dim: int | None = None
  task_log_vars: tuple = ()

  def setup(self):
    pixels, stages = {}, {}
    for modality, spec in self.towers.items():
      spec = dict(spec)
      cls = registry.tower_class(spec.pop("kind", None), modality)
      spec.pop("input", None)
      stages[modality] = feature_stage(spec.pop("features", None), modality)
      proj, proj_bias = spec.pop("proj", True), spec.pop("proj_bias", False)
      pixels[modality] = (spec.pop("pixel_mean", None), spec.pop("pixel_std", None))
      setattr(self, f"{modality}_tower", cls(**_with_dtype(cls, spec, self.dtype)))
      setattr(self, f"{modality}_proj", nn.Dense(
          self.embed_dim, use_bias=proj_bias, dtype=self.dtype,
          kernel_init=logical(layers.DEFAULT_KERNEL_INIT, "embed", "joint"),
          bias_init=logical(nn.initializers.zeros, "joint")) if proj else _identity)
    self.pixels, self.stages = pixels, stages
    for name, spec in self.heads.items():
      spec = dict(spec)
      cls = registry.head_class(spec.pop("kind", None), name)
      setattr(self, f"{name}_head", cls(**_with_dtype(cls, spec, self.dtype)))
    max_log = math.log(self.max_temperature)
    scales = {"": self._scale_and_bias("", max_log)}
    for pair in self.pair_scales:
      scales[pair_name(pair)] = self._scale_and_bias("_" + "_".join(pair), max_log)
    self.scales = scales
    # Kendall-style task uncertainty: one log-variance per loss term, from 0
    # (every term starts at its fixed weight).
    self.log_vars = {t: self.param(f"log_var_{t}", logical(nn.initializers.zeros), ())
                     for t in self.task_log_vars}
    if self.teacher_dim:
      self.to_teacher = self.param(
          "to_teacher", logical(layers.DEFAULT_KERNEL_INIT, "joint", None),
          (self.embed_dim, self.teacher_dim))

  def _scale_and_bias(self, suffix: str, max_log: float):
    log_scale = self.param(f"log_scale{suffix}", logical(nn.initializers.constant(
        math.log(self.temperature_init))), ())
    bias = (self.param(f"bias{suffix}", logical(nn.initializers.constant(self.bias_init)), ())
            if self.bias_init is not None else jnp.zeros((), jnp.float32))
    return lambda: (jnp.exp(jnp.minimum(log_scale, max_log)).astype(jnp.float32),
                    jnp.asarray(bias, jnp.float32))

  def input_key(self, modality: str) -> str:
    """The batch key modality `modality`'s tower reads."""
    return self.towers[modality].get("input", modality)

  def token_modalities(self) -> tuple[str, ...]:
    """Modalities whose token sequences some head reads."""
    wanted = []
    for name in self.heads:
      head = getattr(self, f"{name}_head")
      reads = getattr(head, "token_modalities", ())
      wanted += [m for m in (reads() if callable(reads) else reads) if m not in wanted]
    return tuple(wanted)

  def features(self, x, modality: str, tokens: bool = True) -> dict:
    """One tower's outputs on x ([B, ...] of its input field).

    Returns {"z": [B, D] unit norm} and, with tokens, "tokens" [B, T, W] and,
    for a tower with a pad_id reading integer ids, "mask" [B, T] bool.
    """
    tower = getattr(self, f"{modality}_tower")
    proj = getattr(self, f"{modality}_proj")
    x = tower_input(x, *self.pixels[modality])
    if self.stages[modality] is not None:
      x = self.stages[modality](x)
    if not tokens:
      return {"z": l2_normalize(proj(tower(x)))}
    pooled, seq = tower(x, return_sequence=True)
    out = {"z": l2_normalize(proj(pooled)), "tokens": seq}
    if hasattr(tower, "pad_id") and jnp.issubdtype(x.dtype, jnp.integer):
      out["mask"] = jnp.asarray(x) != tower.pad_id  # x may be a host (NumPy) batch
    return out

  def encode(self, x, modality: str):
    """x: [B, ...] of modality's input field -> [B, D] unit norm."""
    return self.features(x, modality, tokens=False)["z"]

  def encode_image(self, images):
    """images: [B, H, W, C] uint8 or float in [-1, 1] -> [B, D] unit norm."""
    return self.encode(images, "image")

  def encode_text(self, tokens):
    """tokens: [B, L] int -> [B, D] unit norm."""
    return self.encode(tokens, "text")

  def head(self, name: str, method: str, *args, **kwargs):
    """Calls `method` of head `name` (e.g. a decoder's prefill and step, for
    generation: model.apply(variables, "caption", "step", ..., method=model.head))."""
    return getattr(getattr(self, f"{name}_head"), method)(*args, **kwargs)

  def __call__(self, batch: Mapping[str, Any]) -> dict:
    """batch: {input key: [B, ...]} -> the outputs listed in the module docstring."""
    with_tokens = self.token_modalities()
    out = {}
    for modality in self.towers:
      feats = self.features(batch[self.input_key(modality)], modality,
                            tokens=modality in with_tokens)
      out.update({f"{key}/{modality}": value for key, value in feats.items()})
    for name, scale_and_bias in self.scales.items():
      suffix = f"/{name}" if name else ""
      out[f"scale{suffix}"], out[f"bias{suffix}"] = scale_and_bias()
    for term, log_var in self.log_vars.items():
      out[f"log_var/{term}"] = jnp.asarray(log_var, jnp.float32)
    if self.teacher_dim:
      out["to_teacher"] = jnp.asarray(self.to_teacher, jnp.float32)
    for name in self.heads:
      head = getattr(self, f"{name}_head")
      # A head that learns to write a field (a caption decoder) also reads the batch.
      reads_batch = "batch" in inspect.signature(type(head).__call__).parameters
      result = head(out, batch) if reads_batch else head(out)
      for key, value in result.items():
        if f"{name}/{key}" in out:
          raise ValueError(f"head {name!r} writes {name}/{key}, which another part of the "
                           "model writes already; rename the head in config.model.heads.")
        out[f"{name}/{key}"] = value
    return out
