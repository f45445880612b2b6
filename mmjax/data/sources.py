"""Records of a source file, before any image is touched.

Each reader in `READERS` (coco_karpathy, jsonl, tsv: the layouts are in
mmjax.data.prepare's docstring) turns a captions file into `Record`s: image
id, image path (joined to the images directory, not opened), raw captions and
split. `collect` cleans the captions and drops records left without any or
with a repeated image id; `carve` fills an empty val or test split from train.
Problems are counted in a `Report` under a reason from `REASONS`; the build
(mmjax.data.prepare) goes on to count what it finds in the images there too.
"""

import collections
import hashlib
import json
import os
from typing import Iterable, Iterator, NamedTuple

from mmjax.data import image_text

LONG_CAPTION = 1000  # characters; kept, but counted: probably not a caption
SAMPLES_PER_REASON = 5
_SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val",
                "validation": "val", "dev": "val", "test": "test"}
_TSV_HEADERS = {(a, b) for a in ("image", "image_path", "path", "file", "filename", "filepath")
                for b in ("caption", "captions", "text")}

# What each report reason means for the data. Reasons not listed here are
# changes made to a kept image (preprocess.EncodedImage.changes).
SKIPPED, DROPPED, NOTED = "skipped", "captions_dropped", "noted"
REASONS = {
    "missing_image": SKIPPED, "unreadable_file": SKIPPED, "not_an_image": SKIPPED,
    "corrupt_image": SKIPPED, "too_small": SKIPPED, "too_large": SKIPPED,
    "no_captions": SKIPPED, "duplicate_id": SKIPPED, "malformed_json": SKIPPED,
    "malformed_record": SKIPPED, "non_utf8_line": SKIPPED, "unknown_split": SKIPPED,
    "empty_caption": DROPPED, "non_utf8_caption": DROPPED, "malformed_caption": DROPPED,
    "duplicate_caption": DROPPED,
    "long_caption": NOTED,
    # Audio files (mmjax.data.audio_io); the fixes made to kept clips are noted.
    "missing_audio": SKIPPED, "unreadable_audio": SKIPPED, "truncated_audio": SKIPPED,
    "corrupt_audio": SKIPPED, "silent_audio": SKIPPED, "too_short_audio": SKIPPED,
}


class Record(NamedTuple):
  image_id: str
  image_path: str
  captions: list  # list[str]: raw from the source, cleaned by collect()
  split: str  # one of image_text.SPLITS
  where: str  # file:line or file:entry, for the report


class Report:
  """Counts per reason, and the first few places each reason occurred."""

  def __init__(self):
    self.counts = collections.Counter()
    self.samples = collections.defaultdict(list)

  def add(self, reason: str, where: str) -> None:
    self.counts[reason] += 1
    if len(self.samples[reason]) < SAMPLES_PER_REASON:
      self.samples[reason].append(where)

  def to_json(self, examples: dict) -> dict:
    groups = {SKIPPED: {}, DROPPED: {}, NOTED: {}}
    for reason, n in sorted(self.counts.items()):
      groups[REASONS.get(reason, NOTED)][reason] = n
    return {"examples": examples, **groups, "first": dict(sorted(self.samples.items()))}


# ----------------------------------------------------------------- readers


def _lines(path: str, report: Report) -> Iterator[tuple[str, str]]:
  """(file:line, text) for each non-blank UTF-8 line; other lines are counted."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      where = f"{path}:{number}"
      try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
      except UnicodeDecodeError:
        report.add("non_utf8_line", where)
        continue
      line = line.rstrip("\r\n")
      if line.strip():
        yield where, line


def _split(value, report: Report, where: str) -> str | None:
  split = _SPLIT_NAMES.get(value) if isinstance(value, str) else None
  if split is None:
    report.add("unknown_split", where)
  return split


def _clean_id(value: str) -> str:
  # Ids built from undecodable file names hold lone surrogates, which tfds
  # cannot store as UTF-8: keep them readable, as backslash escapes.
  return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_coco_karpathy(source: str, images: str, report: Report) -> Iterator[Record]:
  with open(source, "rb") as f:
    # surrogateescape: a caption with bad bytes is dropped later, not the file.
    text = f.read().decode("utf-8-sig", errors="surrogateescape")
  try:
    data = json.loads(text)
  except ValueError as e:
    raise ValueError(f"--source {source} is not valid JSON ({e}).") from None
  entries = data.get("images") if isinstance(data, dict) else None
  if not isinstance(entries, list):
    raise ValueError(f"--source {source} has no \"images\" list: is it a Karpathy split "
                     "file (dataset_coco.json / dataset_flickr30k.json)?")
  for i, entry in enumerate(entries):
    where = f"{source}:images[{i}]"
    if not (isinstance(entry, dict) and isinstance(entry.get("filename"), str)
            and isinstance(entry.get("filepath") or "", str)
            and isinstance(entry.get("sentences"), list)):
      report.add("malformed_record", where)
      continue
    split = _split(entry.get("split", "train"), report, where)
    if split is None:
      continue
    relative = os.path.join(entry.get("filepath") or "", entry["filename"])
    image_id = str(entry["cocoid"]) if "cocoid" in entry else relative
    captions = [_karpathy_caption(sentence) for sentence in entry["sentences"]]
    yield Record(_clean_id(image_id), os.path.join(images, relative), captions, split, where)


def _karpathy_caption(sentence):
  """The caption of one "sentences" entry; anything but a str is counted later."""
  if not isinstance(sentence, dict):
    return sentence
  if "raw" in sentence:
    return sentence["raw"]
  tokens = sentence.get("tokens")
  if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
    return " ".join(tokens)
  return None


def read_jsonl(source: str, images: str, report: Report) -> Iterator[Record]:
  for where, line in _lines(source, report):
    try:
      obj = json.loads(line)
    except ValueError:
      report.add("malformed_json", where)
      continue
    captions = obj.get("captions") if isinstance(obj, dict) else None
    captions = [captions] if isinstance(captions, str) else captions
    image_id = obj.get("id", obj.get("image")) if isinstance(obj, dict) else None
    if not (isinstance(obj.get("image") if isinstance(obj, dict) else None, str)
            and obj["image"] and isinstance(captions, list)
            and isinstance(image_id, (str, int)) and not isinstance(image_id, bool)):
      report.add("malformed_record", where)
      continue
    split = _split(obj.get("split", "train"), report, where)
    if split is not None:
      yield Record(_clean_id(str(image_id)), os.path.join(images, obj["image"]), captions,
                   split, where)


def read_tsv(source: str, images: str, report: Report) -> Iterator[Record]:
  rows = {}  # image path -> (first place, captions), in order of first appearance
  for where, line in _lines(source, report):
    path, tab, caption = line.partition("\t")
    path = path.strip()
    if not tab or not path:
      report.add("malformed_record", where)
      continue
    if not rows and (path.lower(), caption.strip().lower()) in _TSV_HEADERS:
      continue
    rows.setdefault(path, (where, []))[1].append(caption)
  for path, (where, captions) in rows.items():
    yield Record(_clean_id(path), os.path.join(images, path), captions, "train", where)


# format -> reader(source, images, report) -> Iterator[Record], in source order.
READERS = {"coco_karpathy": read_coco_karpathy, "jsonl": read_jsonl, "tsv": read_tsv}
assert tuple(READERS) == image_text.FORMATS


def _clean_captions(captions: list, report: Report, where: str) -> list[str]:
  kept = []
  for caption in captions:
    if not isinstance(caption, str):
      report.add("malformed_caption", where)
      continue
    try:
      caption.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
      report.add("non_utf8_caption", where)
      continue
    caption = " ".join(caption.split())  # tabs, newlines, runs of spaces -> one space
    if not caption:
      report.add("empty_caption", where)
    elif caption in kept:
      report.add("duplicate_caption", where)
    else:
      if len(caption) > LONG_CAPTION:
        report.add("long_caption", where)
      kept.append(caption)
  return kept


def collect(records: Iterable[Record], report: Report) -> dict[str, list[Record]]:
  """Cleans captions, drops records without any and repeated ids; groups by split."""
  splits = {split: [] for split in image_text.SPLITS}
  seen = set()
  for record in records:
    captions = _clean_captions(record.captions, report, record.where)
    if not captions:
      report.add("no_captions", record.where)
    elif record.image_id in seen:
      report.add("duplicate_id", record.where)
    else:
      seen.add(record.image_id)
      splits[record.split].append(record._replace(captions=captions))
  return splits


def _draw(image_id: str) -> float:
  """A uniform number in [0, 1) that depends on the image id alone."""
  digest = hashlib.sha256(image_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def carve(splits: dict[str, list[Record]], val_fraction: float,
          test_fraction: float) -> dict[str, list[Record]]:
  """Fills an empty val or test split from train; splits the source fills are kept.

  A train record goes to val when `_draw(image_id)` is below val_fraction, to
  test when it is in the next test_fraction, so adding records to a source
  never moves the others. A band that catches no record takes the remaining
  one with the smallest draw, so each split gets at least one.

  Raises ValueError when train is too small to give each empty split a record
  and keep one, or when the fractions carve all of train away.
  """
  bands = {"val": (0.0, val_fraction), "test": (val_fraction, val_fraction + test_fraction)}
  missing = [split for split in ("val", "test") if not splits[split]]
  if not missing:
    return splits
  train = splits["train"]
  if len(train) < len(missing) + 1:
    raise ValueError(f"the source has {len(train)} usable train record(s) and no "
                     f"{' or '.join(missing)} split: too few to carve "
                     f"{' and '.join(missing)} from train.")
  draws = [_draw(r.image_id) for r in train]
  chosen = {}  # index in train -> split
  for split in missing:
    low, high = bands[split]
    picked = [i for i, u in enumerate(draws) if low <= u < high and i not in chosen]
    if not picked:
      picked = [min((i for i in range(len(train)) if i not in chosen), key=draws.__getitem__)]
    chosen.update((i, split) for i in picked)
  if len(chosen) == len(train):
    raise ValueError(f"--val-fraction/--test-fraction carve all {len(train)} train "
                     "images away; lower them.")
  out = dict(splits)
  for split in missing:
    out[split] = [r for i, r in enumerate(train) if chosen.get(i) == split]
  out["train"] = [r for i, r in enumerate(train) if i not in chosen]
  return out
