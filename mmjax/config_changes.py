"""How a run's saved config compares with the current one.

`upgrade` reads a config written by an earlier mmjax in today's layout;
`diff` lists what changed beyond run-time settings, for the resume check.
"""

import json

# Keys that may differ between a checkpoint's config and the resuming run's:
# they change when and how the run reports and where it reads, not what it
# computes. A key matches if it equals an entry or lies under one.
RUNTIME_KEYS = ("log_every", "eval_every", "checkpoint_every", "checkpoint", "eval", "profile",
                "resume", "max_bad_steps", "mesh", "init", "data.num_workers",
                "data.prefetch", "data.data_dir")


def _as_json(value):
  """Tuples become lists at every depth, as a JSON round trip makes them:
  (("image", "text"),) and [["image", "text"]] are one value."""
  if isinstance(value, (tuple, list)):
    return [_as_json(v) for v in value]
  return value


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}; tuples become lists (as JSON has them)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = _as_json(value)
  return out


def diff(saved: dict, current: dict) -> list[str]:
  """Lines "key: saved -> current" for every non-run-time key that differs.

  A key the saved config lacks is no change when its current value is the
  `base()` default: it was added to mmjax after that run started, and its
  default computes what the older code did.

  saved, current: nested dicts (`config.to_dict()` or its JSON round trip).
  """
  runtime = lambda k: any(k == r or k.startswith(r + ".") for r in RUNTIME_KEYS)
  a, b = flatten(upgrade(saved)), flatten(current)
  from mmjax.configs import base  # pylint: disable=g-import-not-at-top
  defaults = flatten(base().to_dict())
  missing = object()
  lines = []
  for key in sorted(a.keys() | b.keys()):
    old, new = a.get(key, missing), b.get(key, missing)
    if runtime(key) or old == new:
      continue
    if old is missing and key in defaults and new == defaults[key]:
      continue
    show = lambda v: "(absent)" if v is missing else repr(v)
    lines.append(f"  {key}: {show(old)} -> {show(new)}")
  return lines


def upgrade(saved: dict) -> dict:
  """A config dict written by an earlier mmjax, in today's layout.

  Before towers were keyed by modality a config had model.image and
  model.text (text without a kind: the transformer), loss terms as
  {name: weight} and evaluators as {name: period}. Their parameter paths
  (image_tower/..., text_tower/...) are unchanged, so such a run resumes,
  warm-starts or teaches as it is once its config reads in the new layout.
  """
  saved = json.loads(json.dumps(saved))  # a deep copy of plain values
  model = saved.get("model", {})
  if "towers" not in model and ("image" in model or "text" in model):
    towers = {}
    if "image" in model:
      towers["image"] = {"kind": "vit", **model.pop("image")}
    if "text" in model:
      towers["text"] = {"kind": "transformer", **model.pop("text")}
    model["towers"] = towers
  evaluators = saved.get("eval", {}).get("evaluators", {})
  for eid, spec in list(evaluators.items()):
    if spec is None or isinstance(spec, int):
      evaluators[eid] = {"kind": eid, "every": spec}
      if eid == "retrieval":
        evaluators[eid]["pair"] = ["image", "text"]
  return saved
