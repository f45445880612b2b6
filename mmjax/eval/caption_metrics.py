"""Caption metrics: BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR) of generated captions.

The scorers are pycocoevalcap's (the code behind the COCO caption server), fed
from plain dicts, so the numbers are the ones papers report:

  BLEU-n    corpus-level BLEU with the "closest" reference length for the
            brevity penalty (pycocoevalcap.bleu), in [0, 1].
  ROUGE-L   LCS F-measure with beta = 1.2 against the best reference, averaged
            over images (pycocoevalcap.rouge), in [0, 1].
  CIDEr-D   pycocoevalcap.cider.Cider, which is the CIDEr-D variant the COCO
            server reports (under the name "CIDEr"): TF-IDF n-gram vectors
            (n = 1..4) with the IDF taken over the references of the scored set,
            hypothesis n-gram weights clipped at the reference's (min(h, r)),
            a Gaussian length penalty exp(-delta^2 / (2 * 6^2)), the cosine
            averaged over references and n, times 10 (so up to ~10). As the IDF
            comes from the scored set, CIDEr-D of one image is 0 and scores on a
            few images do not compare with scores on a whole split.
  METEOR    METEOR 1.5 (pycocoevalcap.meteor), only with `meteor=True`.

What needs Java (`java` on PATH; pycocoevalcap ships the jars):
  * tokenizer="ptb": the Stanford PTB tokenizer, which is how the COCO server
    tokenizes both captions and references before scoring. Use it for numbers
    to put next to published ones.
  * meteor=True: METEOR runs as a Java process.
BLEU, ROUGE-L and CIDEr-D themselves are Python. The default
tokenizer="simple" (`simple_tokenize`) needs no Java: it lowercases, splits off
punctuation and English clitics ("dog's" -> "dog 's", "don't" -> "do n't") the
way PTB does, and drops the same punctuation tokens pycocoevalcap drops after
PTB. Its numbers are close to the PTB path but not promised identical: PTB
has more special cases (abbreviations, "?!" kept as a token, ...).

Measured (OpenJDK 17, pycocoevalcap 1.2): on 40 hand-written COCO-style
images (3 references and 1 prediction each: 160 captions with capitals, final
periods, commas, possessives, contractions, quotes, hyphens, "&", "--",
"3:30" and brackets) `simple_tokenize` gave exactly PTB's tokens for all 160,
so every metric, METEOR included, was equal to the last digit (BLEU-4 0.5447,
ROUGE-L 0.7795, CIDEr-D 2.7039, METEOR 0.4210). On 77 strings chosen to be
hard (abbreviations, "u.s.a.", "1,000", "$10", slashes, curly quotes, tabs,
"i'd've", "gonna", ...) they agreed on 72; the other 5 were "what?!" and
"ok!!" (PTB keeps "?!" and "!!" as tokens), "rock 'n' roll" and "an 'n'
thing" (PTB keeps "'n'"), and "a...b" (PTB: "a. b"). Captions of lower-case
words without punctuation (the embedded shapes dataset's) tokenize the same
by construction. Timing there: the simple path scores 40 images in ~0.1 s,
"ptb" adds ~0.1 s of Java, METEOR ~6 s (it loads its paraphrase table).

Usage:

  scores = caption_metrics.score({17: "a red circle"}, {17: ["a red circle", ...]})
  scores["CIDEr-D"], scores["BLEU-4"], scores["num_images"]
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Hashable, Mapping, Sequence

__all__ = ["simple_tokenize", "score", "java_available", "METRIC_NAMES"]

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")
TOKENIZERS = ("simple", "ptb")

# What pycocoevalcap's PTBTokenizer removes after PTB tokenization (its
# PUNCTUATIONS), with the straight double quote added: PTB rewrites " as `` or
# '' first, which are in the list. Brackets are not here on purpose: PTB turns
# them into -LRB- etc., pycocoevalcap lowercases them to -lrb- and then compares
# against the upper-case names, so on the COCO server brackets stay as tokens.
_DROPPED = frozenset({"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--",
                      "...", ";"})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-",
             "}": "-rcb-"}
_BRACKET_TOKENS = frozenset(_BRACKETS.values())
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
# Split off wherever they occur (PTB makes each its own token).
_ALWAYS_SPLIT = re.compile(r"\.\.\.|--|[;!?\"`&%$#|]|[()\[\]{}]")
# Commas and colons split off except inside numbers ("1,000", "3:30").
_COMMA_COLON = re.compile(r"(?<!\d)[,:]|[,:](?!\d)")
# English clitics PTB splits from the word before them; applied repeatedly
# ("i'd've" -> "i 'd 've").
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
_CLITIC = re.compile(f"^(.+?)({'|'.join(_CLITICS)})$")
# Words PTB splits in two.
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
                "wanna": ["wan", "na"]}
# A final period PTB keeps: abbreviations, and dotted letters ("u.s.", "e.g.").
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc",
                            "prof", "inc", "ltd", "mt", "ft"})
_DOTTED = re.compile(r"^([a-z]\.)+[a-z]$")


def _edge_split(chunk: str) -> list[str]:
  """One whitespace-free, lower-case chunk -> its tokens (punctuation included)."""
  if chunk in _BRACKET_TOKENS:
    return [chunk]
  lead = []
  while len(chunk) > 1 and chunk[0] in "'-/" and chunk not in _CLITICS:
    lead.append(chunk[0])
    chunk = chunk[1:]
  trail = []
  while len(chunk) > 1 and chunk[-1] in "'-/.":
    body = chunk[:-1]
    if chunk[-1] == "." and (body in _ABBREVIATIONS or _DOTTED.match(body)):
      break
    trail.insert(0, chunk[-1])
    chunk = body
  words = []
  while (m := _CLITIC.match(chunk)):
    words.insert(0, m.group(2))
    chunk = m.group(1)
  words = _SPLIT_WORDS.get(chunk, [chunk]) + words
  return lead + words + trail


def simple_tokenize(text: str) -> str:
  """A Java-free stand-in for pycocoevalcap's PTB tokenization of one caption.

  Lowercases; splits off punctuation, symbols ($ % # &) and clitics as PTB does;
  drops the punctuation tokens pycocoevalcap drops (. , ! ? ; : ' " ` - -- ...);
  writes brackets as PTB's -lrb- / -rrb- tokens. Every kind of whitespace
  (tabs, newlines) separates tokens.

  Args:
    text: one caption.

  Returns:
    The tokens joined by single spaces; "" if no word is left.
  """
  text = text.lower().translate(_QUOTES)
  text = _ALWAYS_SPLIT.sub(lambda m: f" {_BRACKETS.get(m.group(), m.group())} ", text)
  text = _COMMA_COLON.sub(lambda m: f" {m.group()} ", text)
  tokens = [t for chunk in text.split() for t in _edge_split(chunk)]
  return " ".join(t for t in tokens if t not in _DROPPED)


def java_available() -> bool:
  """True if a `java` executable is on PATH (PTB tokenization, METEOR)."""
  return shutil.which("java") is not None


def _some(ids, k: int = 5) -> str:
  ids = list(ids)
  shown = ", ".join(repr(i) for i in ids[:k])
  return shown + (f", ... ({len(ids)} in all)" if len(ids) > k else "")


def _validate(predictions, references) -> list:
  """Checks the two mappings; returns the image ids in the order of predictions."""
  if not predictions or not references:
    raise ValueError(
        f"nothing to score: got {len(predictions)} predictions and {len(references)} "
        "reference sets; pass {image_id: caption} and {image_id: [captions]} for at "
        "least one image.")
  pred_ids, ref_ids = set(predictions), set(references)
  if pred_ids != ref_ids:
    only_pred = [i for i in predictions if i not in ref_ids]
    only_ref = [i for i in references if i not in pred_ids]
    parts = []
    if only_pred:
      parts.append(f"{len(only_pred)} predicted image ids have no references "
                   f"({_some(only_pred)})")
    if only_ref:
      parts.append(f"{len(only_ref)} image ids with references have no prediction "
                   f"({_some(only_ref)})")
    hint = ""
    if {str(i) for i in pred_ids} == {str(i) for i in ref_ids}:
      hint = (" The ids differ only in type (e.g. 17 vs '17', as after a JSON round "
              "trip); convert one side.")
    raise ValueError("predictions and references must cover the same image ids: "
                     + "; ".join(parts) + "." + hint)
  not_str = [i for i, p in predictions.items() if not isinstance(p, str)]
  if not_str:
    raise TypeError(f"predictions must be strings (an empty one is allowed); not so for "
                    f"image ids {_some(not_str)}.")
  for i, refs in references.items():
    if isinstance(refs, str):
      raise TypeError(f"references of image id {i!r} is one string; give a list of "
                      "reference captions, e.g. [caption].")
    if len(refs) == 0:
      raise ValueError(f"image id {i!r} has no reference captions; every scored image "
                       "needs at least one (COCO has 5): drop the image or add them.")
    if not all(isinstance(r, str) for r in refs):
      raise TypeError(f"reference captions of image id {i!r} must be strings, got "
                      f"{[type(r).__name__ for r in refs]}.")
  return list(predictions)


def _ptb_tokenize(captions: dict) -> dict:
  """{key: [caption, ...]} -> the same, tokenized by pycocoevalcap's PTBTokenizer."""
  from pycocoevalcap.tokenizer import ptbtokenizer  # pylint: disable=g-import-not-at-top
  # The tokenizer feeds Java one caption per line and reads lines back, so a
  # caption holding \r or another line break would shift every later caption
  # onto the wrong image; str.split() treats all of them as whitespace.
  given = {k: [{"caption": " ".join(c.split())} for c in caps]
           for k, caps in captions.items()}
  try:
    out = ptbtokenizer.PTBTokenizer().tokenize(given)
  except PermissionError as e:
    # It writes its input to a temporary file beside its jar.
    folder = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    raise RuntimeError(
        f"pycocoevalcap's PTB tokenizer could not write its temporary file in {folder} "
        f"({e}); make that folder writable, or use tokenizer='simple'.") from e
  bad = [k for k, caps in captions.items() if len(out.get(k, ())) != len(caps)]
  if bad:
    raise RuntimeError(
        f"the PTB tokenizer (Java) returned the wrong number of captions for {_some(bad)}; "
        "check that `java -version` runs, or use tokenizer='simple'.")
  return out


def _meteor(gts: dict, res: dict) -> float:
  from pycocoevalcap.meteor import meteor  # pylint: disable=g-import-not-at-top
  scorer = meteor.Meteor()
  proc = scorer.meteor_p
  try:
    value, _ = scorer.compute_score(gts, res)
  except (ValueError, OSError) as e:  # the Java process died (empty answer, broken pipe)
    err = proc.stderr.read().decode(errors="replace").strip() if proc.poll() is not None else ""
    raise RuntimeError(f"METEOR (Java) failed: {err[-500:] or e}; check that `java -version` "
                       "runs and 2 GB of memory are free, or pass meteor=False.") from e
  finally:
    # Stop Java now, not whenever the scorer is collected; and release the
    # lock a failed compute_score holds, which the scorer's __del__ would
    # otherwise wait on forever.
    if scorer.lock.locked():
      scorer.lock.release()
    proc.stdin.close()
    proc.kill()
    proc.wait()
  return float(value)


def score(predictions: Mapping[Hashable, str],
          references: Mapping[Hashable, Sequence[str]], *,
          tokenizer: str = "simple", meteor: bool = False) -> dict[str, float]:
  """Scores one generated caption per image against that image's references.

  Args:
    predictions: {image_id: caption}; an empty caption is allowed (it scores 0
      and is counted in "num_empty_predictions").
    references: {image_id: [reference captions]} over the same image ids, each
      list non-empty.
    tokenizer: "simple" (`simple_tokenize`, no Java) or "ptb" (pycocoevalcap's
      Stanford PTB tokenizer, as the COCO server; needs Java).
    meteor: also compute METEOR (needs Java; a few seconds to start).

  Returns:
    {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"} as floats
    (pycocoevalcap's scale: BLEU and ROUGE-L in [0, 1], CIDEr-D up to ~10),
    "METEOR" if asked, "num_images" (int) and "num_empty_predictions" (int: the
    predictions left with no word after tokenization).

  Raises:
    ValueError / TypeError: inputs that cannot be scored (message says which ids).
    RuntimeError: "ptb" or METEOR asked for without Java.
  """
  if tokenizer not in TOKENIZERS:
    raise ValueError(f"tokenizer={tokenizer!r}; use one of {TOKENIZERS}.")
  ids = _validate(predictions, references)
  needs = [what for what, on in (("tokenizer='ptb'", tokenizer == "ptb"),
                                 ("meteor=True", meteor)) if on]
  if needs and not java_available():
    raise RuntimeError(
        f"score(..., {', '.join(needs)}) runs Java (pycocoevalcap's jars), but no `java` "
        "is on PATH; install Java (e.g. `apt-get install default-jre-headless`) or call "
        "score(..., tokenizer='simple', meteor=False).")

  if tokenizer == "ptb":
    # One Java start for both sides: keys are (side, image id).
    both = {("res", i): [predictions[i]] for i in ids}
    both.update({("gts", i): list(references[i]) for i in ids})
    tokenized = _ptb_tokenize(both)
    res = {i: tokenized[("res", i)] for i in ids}
    gts = {i: tokenized[("gts", i)] for i in ids}
  else:
    res = {i: [simple_tokenize(predictions[i])] for i in ids}
    gts = {i: [simple_tokenize(r) for r in references[i]] for i in ids}
  # Checked after tokenization: a reference of punctuation alone has no words,
  # and CIDEr-D fails on a set whose references have none.
  wordless = [i for i in ids if not any(gts[i])]
  if wordless:
    raise ValueError(
        f"image id {wordless[0]!r} has no reference captions with a word in them "
        f"(got {list(references[wordless[0]])!r}: nothing is left after tokenization); "
        f"{len(wordless)} such image(s) in all; fix or drop them.")

  from pycocoevalcap.bleu import bleu  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.cider import cider  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.rouge import rouge  # pylint: disable=g-import-not-at-top
  bleus, _ = bleu.Bleu(4).compute_score(gts, res, verbose=0)
  out = {f"BLEU-{n}": float(b) for n, b in enumerate(bleus, start=1)}
  out["ROUGE-L"] = float(rouge.Rouge().compute_score(gts, res)[0])
  out["CIDEr-D"] = float(cider.Cider().compute_score(gts, res)[0])
  if meteor:
    out["METEOR"] = _meteor(gts, res)
  out["num_images"] = len(ids)
  out["num_empty_predictions"] = sum(1 for i in ids if not res[i][0])
  return out
