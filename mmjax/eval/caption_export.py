"""Generated captions as COCO results JSON, with their references beside them.

`python -m mmjax.evaluate ... --export-captions OUT.json` writes two files:

  OUT.json             COCO results format, what the COCO caption server and
                       pycocotools' `COCO.loadRes` read:
                       [{"image_id": 17, "caption": "a red circle ..."}, ...],
                       every image once.
  OUT.references.json  {"17": ["reference caption", ...], ...}: the references
                       they were scored against (JSON keys are strings), so the
                       pair can be scored again offline (`read_coco_results`,
                       then `mmjax.eval.caption_metrics.score`).

Both are checked before anything is written and each is written atomically
(`mmjax.paths.write_bytes`), locally or on gs://.
"""

from __future__ import annotations

import collections
import json
import numbers
import os
from typing import Mapping, Sequence

from mmjax import paths

__all__ = ["write_coco_results", "read_coco_results", "references_path"]


def references_path(path) -> str:
  """OUT.json -> OUT.references.json (a name without .json gets the suffix added)."""
  path = os.fspath(path)
  base = path[:-len(".json")] if path.endswith(".json") else path
  return base + ".references.json"


def _some(ids, k: int = 5) -> str:
  ids = list(ids)
  shown = ", ".join(repr(i) for i in ids[:k])
  return shown + (f", ... ({len(ids)} in all)" if len(ids) > k else "")


def _check(image_ids, captions, references) -> list[int]:
  """Raises on anything the COCO format or a later scoring would reject;
  returns the ids as Python ints."""
  if len(image_ids) != len(captions):
    raise ValueError(f"{len(image_ids)} image ids but {len(captions)} captions; give one "
                     "caption per image id.")
  if len(image_ids) == 0:
    raise ValueError("no captions to write: image_ids is empty.")
  # numbers.Integral admits NumPy integers (ids often come out of an array);
  # bool is an int in Python but never an image id.
  not_int = [i for i in image_ids
             if not isinstance(i, numbers.Integral) or isinstance(i, bool)]
  if not_int:
    raise TypeError(f"COCO image ids are integers; got {_some(not_int)}.")
  ids = [int(i) for i in image_ids]
  repeated = [i for i, n in collections.Counter(ids).items() if n > 1]
  if repeated:
    raise ValueError(f"image ids must be unique (COCO results hold one caption per "
                     f"image); repeated: {_some(repeated)}.")
  ref_ids = set()
  for key in references:
    if not isinstance(key, numbers.Integral) or isinstance(key, bool):
      raise TypeError(f"reference keys must be integer image ids; got {key!r}.")
    ref_ids.add(int(key))
  missing = [i for i in ids if i not in ref_ids]
  extra = sorted(ref_ids - set(ids))
  if missing or extra:
    parts = ([f"no references for image ids {_some(missing)}"] if missing else []) + (
        [f"references for image ids without a caption {_some(extra)}"] if extra else [])
    raise ValueError("captions and references must cover the same image ids: "
                     + "; ".join(parts) + ".")
  bad = [i for i, c in zip(ids, captions) if not isinstance(c, str) or not c.strip()]
  if bad:
    raise ValueError(
        f"captions must be non-empty strings; not so for image ids {_some(bad)}. An "
        "empty generation usually means the decoder stopped at once (check its "
        "end-of-sequence handling); caption_metrics.score() scores and counts empty "
        "predictions in memory.")
  for key, refs in references.items():
    if (isinstance(refs, str) or len(refs) == 0
        or not all(isinstance(r, str) for r in refs)):
      raise ValueError(f"references of image id {key!r} must be a non-empty list of "
                       f"strings; got {refs!r}.")
  return ids


def write_coco_results(path, image_ids: Sequence[int], captions: Sequence[str],
                       references: Mapping[int, Sequence[str]]) -> str:
  """Writes COCO results JSON at `path` and the references at `references_path(path)`.

  Args:
    path: where the results go (local or gs://), e.g. "OUT.json".
    image_ids: [N] unique integer image ids (Python or NumPy ints).
    captions: [N] non-empty strings, captions[k] generated for image_ids[k].
    references: {image_id: [reference captions]} over exactly the ids in
      `image_ids`.

  Returns:
    `path`.

  Raises:
    ValueError / TypeError before anything is written, naming the bad ids.
  """
  ids = _check(image_ids, captions, references)
  by_id = {int(k): list(v) for k, v in references.items()}
  results = [{"image_id": i, "caption": c} for i, c in zip(ids, captions)]
  refs = {str(i): by_id[i] for i in ids}
  path = os.fspath(path)
  if not paths.is_remote(path) and os.path.dirname(path):
    paths.makedirs(os.path.dirname(path))
  # References first: whoever waits for OUT.json finds its references already there.
  paths.write_text(references_path(path), json.dumps(refs, ensure_ascii=False, indent=1))
  paths.write_text(path, json.dumps(results, ensure_ascii=False))
  return path


def read_coco_results(path) -> tuple[dict[int, str], dict[int, list[str]]]:
  """Reads what `write_coco_results` wrote.

  Args:
    path: the results file ("OUT.json"); its references are read from
      `references_path(path)`.

  Returns:
    ({image_id: caption}, {image_id: [reference captions]}), ids as ints, in
    the order of the results file; ready for `caption_metrics.score`.
  """
  path = os.fspath(path)
  ref_path = references_path(path)
  if not paths.exists(ref_path):
    raise FileNotFoundError(f"{ref_path} not found: the references of {path} are read "
                            "from beside it (write both with write_coco_results).")
  results = json.loads(paths.read_text(path))
  captions = {}
  for row in results:
    i = int(row["image_id"])
    if i in captions:
      raise ValueError(f"{path}: image id {i} appears more than once.")
    captions[i] = row["caption"]
  references = {int(k): list(v) for k, v in json.loads(paths.read_text(ref_path)).items()}
  return captions, references
