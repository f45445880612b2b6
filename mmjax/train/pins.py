"""What defines a run besides its config: the tokenizer's vocabulary and the teacher's step.

Both are recorded in every checkpoint (its `data` item, beside the input
position) and checked whenever the run is continued or evaluated:

  tokenizer  a fingerprint (sha256 of the sentencepiece model, or of a
             WordPiece vocabulary). A resume or an evaluation whose tokenizer
             differs stops, naming both, instead of silently remapping every
             token id. The run also keeps a copy of an auto-trained tokenizer in
             `workdir/tokenizer/`, which `build.tokenizer` prefers, so
             re-preparing the dataset cannot change it.
  teacher    the step of the teacher's checkpoint the student distils from. A
             resumed student reads that step again, not the teacher run's
             latest, so an exact resume stays exact while the teacher trains on.

Checkpoints written before pins existed have neither; they are accepted as
they are.
"""

from mmjax import paths


class PinError(ValueError):
  """The run's tokenizer or teacher is not the one its checkpoints were written with."""


def record(tok, teacher_step: int | None) -> dict:
  """The pins of a run, to store in each checkpoint's `data` item."""
  pins = {"tokenizer": {"fingerprint": tok.fingerprint(), "path": str(tok.path),
                        "vocab_size": int(tok.vocab_size)}}
  if teacher_step is not None:
    pins["teacher_step"] = int(teacher_step)
  return pins


def check_tokenizer(saved: dict, tok, where: str) -> None:
  """Raises PinError if `tok` is not the tokenizer recorded in `saved` (a
  checkpoint's data item); silent for checkpoints that recorded none."""
  pinned = saved.get("pins", {}).get("tokenizer")
  if not pinned or pinned["fingerprint"] == tok.fingerprint():
    return
  raise PinError(
      f"the checkpoint in {where} was trained with the tokenizer {pinned['path']} "
      f"(sha256 {pinned['fingerprint'][:12]}, {pinned['vocab_size']} pieces), but this "
      f"config gives {tok.path} (sha256 {tok.fingerprint()[:12]}, {tok.vocab_size} "
      "pieces): every token id would mean another word. Point "
      f"--config.data.tokenizer at the run's tokenizer ({pinned['path']}, or its copy "
      f"in {paths.join(where, 'tokenizer')}), or train into a fresh --workdir.")


def teacher_step(saved: dict | None) -> int | None:
  """The teacher step a checkpoint's data item pins (None: not pinned)."""
  if not saved:
    return None
  step = saved.get("pins", {}).get("teacher_step")
  return None if step is None else int(step)


def keep_tokenizer(workdir: str, tok) -> str | None:
  """Copies a sentencepiece tokenizer that lives outside the run into
  `workdir/tokenizer/` (call on the primary process). Returns the copy's path,
  or None when there is nothing to copy (already in the run, or not a
  sentencepiece model)."""
  model_bytes = getattr(tok, "model_bytes", None)
  own = paths.join(workdir, "tokenizer")
  if model_bytes is None or paths.resolve(tok.path).startswith(paths.resolve(own)):
    return None
  copy = paths.join(own, paths.basename(tok.path))
  if not paths.exists(copy):
    paths.makedirs(own)
    paths.write_bytes(copy, model_bytes())
  return copy
