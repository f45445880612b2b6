"""Which evaluations run, when, and how their numbers come together.

`config.eval.evaluators` maps an evaluator to its period in steps:

  0     at every `eval_every` (the default for retrieval)
  N     every N steps
  -1    only at the end of training, and in `python -m mmjax.evaluate`
  None  off (`--config.eval.evaluators.itm=-1` turns the ITM heads on)

Evaluators:

  retrieval   recall@K and ranks on the test split (the contract's keys)
  zeroshot    shape / colour / relation classification from prompts (shapes)
  itm         image-text matching heads trained on frozen towers (shapes)
  heldout     retrieval on the test images captioned in phrasings training
              never uses (shapes_heldout.TEMPLATES): generalisation to new
              sentence frames (shapes)

Their results are one flat dict: retrieval under the contract's names, the
others under "zeroshot/...", "itm/<head>/..." and "heldout/..." (retrieval's
names, e.g. "heldout/image_to_text_R@1", plus "heldout/truncated").
"""

from typing import Mapping

from mmjax.eval import evaluator, retrieval

EVALUATORS = ("retrieval", "zeroshot", "itm", "heldout")
# Evaluators defined on the shapes dataset's labels only.
SHAPES_ONLY = ("zeroshot", "itm", "heldout")


def check(config) -> None:
  """Raises ValueError for an unknown evaluator, a bad period, or one the data
  cannot support."""
  for name, period in enabled(config.eval.evaluators).items():
    if name not in EVALUATORS:
      raise ValueError(f"config.eval.evaluators has {name!r}; choose from {EVALUATORS}.")
    if not isinstance(period, int) or period < -1:
      raise ValueError(f"config.eval.evaluators.{name}={period!r}: use 0 (every "
                       "eval_every), N > 0 (every N steps) or -1 (at the end only).")
    if name in SHAPES_ONLY and config.data.name != "shapes":
      raise ValueError(f"the {name!r} evaluator needs the shapes dataset's labels; "
                       f"remove it from config.eval.evaluators for {config.data.name!r}.")


def enabled(evaluators: Mapping[str, int | None]) -> dict[str, int]:
  """The evaluators that are on, with their periods."""
  return {name: period for name, period in evaluators.items() if period is not None}


def due(evaluators: Mapping[str, int], step: int, total: int, eval_every: int) -> list[str]:
  """The evaluators to run after `step` of `total`."""
  names = []
  for name, period in enabled(evaluators).items():
    period = eval_every if period == 0 else period
    if step == total or (period > 0 and step % period == 0):
      names.append(name)
  return names


def run(names, model, params, test: dict, tokenizer, config) -> tuple[dict, dict]:
  """Runs `names` on `params`. Returns (flat metrics, embeddings) where
  embeddings is {"image": [N, D], "text": [M, D]} when retrieval ran, else {}."""
  metrics, embeddings = {}, {}
  if "retrieval" in names:
    image_emb, text_emb = evaluator.embed(model, params, test, config.eval.batch_size)
    embeddings = {"image": image_emb, "text": text_emb}
    metrics.update(retrieval.retrieval_metrics(image_emb, text_emb, test["text_to_image"]))
  if "zeroshot" in names:
    from mmjax.eval import zeroshot  # pylint: disable=g-import-not-at-top
    metrics.update(zeroshot.evaluate_shapes_zeroshot(model, params, tokenizer, config))
  if "itm" in names:
    from mmjax.eval import matching  # pylint: disable=g-import-not-at-top
    metrics.update(matching.run_itm(model, params, tokenizer, config))
  if "heldout" in names:
    # The same test images as retrieval's: their embeddings are reused.
    metrics.update(evaluator.heldout(model, params, tokenizer, config,
                                     image_emb=embeddings.get("image")))
  return metrics, embeddings


def format_results(result: dict) -> str:
  """The retrieval table (when present), then every other metric on a line."""
  lines = [retrieval.format_table(result)] if "image_to_text_R@1" in result else []
  held = evaluator.HELDOUT
  if held + "image_to_text_R@1" in result:
    lines += ["held-out phrasings:", retrieval.format_table(
        {k[len(held):]: v for k, v in result.items() if k.startswith(held)})]
  table = ("image_to_text_", "text_to_image_", held + "image_to_text_",
           held + "text_to_image_")
  others = sorted(k for k in result if not k.startswith(table) and k != "step")
  width = max((len(k) for k in others), default=0)
  for key in others:
    value = result[key]
    lines.append(f"{key:<{width}}  {value:.4f}" if isinstance(value, float)
                 else f"{key:<{width}}  {value}")
  return "\n".join(lines)
