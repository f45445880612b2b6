"""Records of the audio source layouts, before any audio file is opened.

Each reader in `READERS` takes (source, audio directory, report) and returns
a `Listing`: `sources.Record`s (the clip's id, the path of its audio file,
its raw captions, its split) and, for labelled sets, the class names and
each clip's label. Problems are counted in the `sources.Report` as for
images; `sources.collect` then cleans the captions and drops repeated ids.

  audiocaps  AudioCaps CSVs, `audiocap_id,youtube_id,start_time,caption`, one
             row per caption: --source is one CSV, or a directory holding
             train.csv, val.csv and test.csv (the split of a CSV is its file
             name: train, val / validation, test; any other name is train, and
             val and test are carved from it). The rows of one clip (same
             youtube_id and start_time) are merged into one record with all
             their captions. The clip's file is looked up anywhere under
             --audio by its name without extension, the first of
             `<youtube_id>_<start_time>`, `Y<youtube_id>_<start>.000_<start+10>.000`
             (AudioSet's), `Y<youtube_id>`, `<youtube_id>`, `<audiocap_id>` (of
             any of its rows) that exists.
  clotho     Clotho CSVs, `file_name,caption_1,...,caption_5`: --source is one
             CSV or a directory holding clotho_captions_{development,
             validation,evaluation}.csv (-> train, val, test; any other name is
             train). file_name is looked up anywhere under --audio (as the
             archives unpack: development/, validation/, evaluation/), in the
             split's folder when several hold that name.
  esc50      ESC-50: --source is the dataset's root (holding meta/esc50.csv)
             or esc50.csv itself, with columns filename, fold, target,
             category; files are in --audio (default: <root>/audio). Fold 5 is
             the test split, fold 4 val, folds 1-3 train: the last fold of
             ESC-50's five-fold protocol, so test numbers are one fold's (400
             clips), and a model that never trained on ESC-50 can still use
             folds 1-4 for a linear probe. Labels are `target`; class names
             the categories with "_" read as a space ("chirping birds"),
             which are also each clip's caption.
"""

import csv
import os
from typing import Iterator, NamedTuple

from mmjax.data import audio_text
from mmjax.data import sources

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")
AUDIOCAPS_COLUMNS = ("youtube_id", "caption")
CLOTHO_FILES = {"clotho_captions_development": "train", "clotho_captions_validation": "val",
                "clotho_captions_evaluation": "test"}
CLOTHO_FOLDERS = {"train": "development", "val": "validation", "test": "evaluation"}
ESC50_SPLITS = {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}
ESC50_COLUMNS = ("filename", "fold", "target", "category")
# Ids as image ids are kept: readable, surrogates escaped.
_clean_id = sources._clean_id  # pylint: disable=protected-access


class Listing(NamedTuple):
  records: list  # list[sources.Record], in source order
  classes: tuple | None = None  # class names by label, labelled sets only
  labels: dict | None = None  # record image_id -> label


def _csv_rows(path: str, report: sources.Report) -> Iterator[tuple[str, dict]]:
  """(file:line, {column: value}) per row of a CSV with a header row.

  Bytes that are not UTF-8 become lone surrogates (the caption is dropped by
  sources.collect, an id keeps them escaped); rows with more fields than the
  header are counted as malformed_record.
  """
  with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise ValueError(f"--source {path} is empty; it needs a header row.")
    header = [h.strip().lower() for h in header]
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if not any(cell.strip() for cell in row):
        continue
      if len(row) > len(header):
        report.add("malformed_record", where)
        continue
      yield where, dict(zip(header, [cell.strip() for cell in row]))


def _columns(path: str, required: tuple, what: str) -> None:
  with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
    header = [h.strip().lower() for h in next(csv.reader(f), [])]
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f"--source {path} has no column {' or '.join(missing)} (its header: "
                     f"{header}); is it {what}?")


def _csvs(source: str, names: dict[str, str], what: str) -> list[tuple[str, str]]:
  """[(csv path, split)]: the one CSV given, or those of `names` in a directory."""
  if os.path.isdir(source):
    found = [(os.path.join(source, f"{stem}.csv"), split) for stem, split in names.items()
             if os.path.isfile(os.path.join(source, f"{stem}.csv"))]
    if not found:
      raise FileNotFoundError(f"--source {source} holds none of "
                              f"{[f'{s}.csv' for s in names]}; give {what}.")
    return found
  if not os.path.isfile(source):
    raise FileNotFoundError(f"--source {source} is not a file or directory.")
  stem = os.path.splitext(os.path.basename(source))[0].lower()
  return [(source, names.get(stem, "train"))]


def _audio_files(audio: str) -> Iterator[str]:
  """Paths of the audio files under `audio`, recursively, in sorted order."""
  for root, dirs, files in os.walk(audio):
    dirs.sort()
    for name in sorted(files):
      if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
        yield os.path.join(root, name)


def _audio_index(audio: str) -> dict[str, str]:
  """{file name without extension: path} of the audio files under `audio`
  (the first in sorted order wins a repeated name)."""
  index = {}
  for path in _audio_files(audio):
    index.setdefault(os.path.splitext(os.path.basename(path))[0], path)
  return index


def _missing(audio: str, name: str) -> str:
  # A path that does not exist, so the build counts missing_audio for it.
  return os.path.join(audio, name)


def read_audiocaps(source: str, audio: str, report: sources.Report) -> Listing:
  files = _csvs(source, {"train": "train", "val": "val", "validation": "val", "test": "test"},
                "AudioCaps's train.csv / val.csv / test.csv")
  clips = {}  # (youtube_id, start_time) -> [where, split, captions, audiocap_ids]
  for path, split in files:
    _columns(path, AUDIOCAPS_COLUMNS, "an AudioCaps CSV (audiocap_id,youtube_id,"
                                      "start_time,caption)")
    for where, row in _csv_rows(path, report):
      youtube_id = row.get("youtube_id", "")
      if not youtube_id or "caption" not in row:
        report.add("malformed_record", where)
        continue
      clip = clips.setdefault((youtube_id, row.get("start_time", "")), [where, split, [], []])
      clip[2].append(row["caption"])
      if row.get("audiocap_id"):
        clip[3].append(row["audiocap_id"])
  index = _audio_index(audio)
  records = []
  for (youtube_id, start), (where, split, captions, ids) in clips.items():
    names = [f"{youtube_id}_{start}"] if start else []
    try:
      s = float(start)
      names.append(f"Y{youtube_id}_{s:.3f}_{s + 10:.3f}")
    except ValueError:
      pass
    names += [f"Y{youtube_id}", youtube_id, *ids]
    path = next((index[n] for n in names if n in index), _missing(audio, names[0]))
    clip_id = f"{youtube_id}_{start}" if start else youtube_id
    records.append(sources.Record(_clean_id(clip_id), path, captions, split, where))
  return Listing(records)


def read_clotho(source: str, audio: str, report: sources.Report) -> Listing:
  files = _csvs(source, CLOTHO_FILES, "Clotho's clotho_captions_{development,validation,"
                                      "evaluation}.csv")
  found = {}  # file name -> its paths under --audio
  for path in _audio_files(audio):
    found.setdefault(os.path.basename(path), []).append(path)
  records = []
  for path, split in files:
    _columns(path, ("file_name", "caption_1"), "a Clotho captions CSV (file_name,"
                                               "caption_1,...,caption_5)")
    for where, row in _csv_rows(path, report):
      name = row.get("file_name", "")
      if not name:
        report.add("malformed_record", where)
        continue
      captions = [v for k, v in row.items() if k.startswith("caption_")]
      # Anywhere under --audio, in the split's own folder if the name is in several.
      paths = found.get(name, [_missing(audio, name)])
      path_ = next((p for p in paths
                    if os.path.basename(os.path.dirname(p)) == CLOTHO_FOLDERS[split]), paths[0])
      records.append(sources.Record(_clean_id(name), path_, captions, split, where))
  return Listing(records)


def esc50_audio_dir(source: str) -> str:
  """ESC-50's audio folder beside its meta folder: the default --audio."""
  root = source if os.path.isdir(source) else os.path.dirname(os.path.dirname(source))
  return os.path.join(root, "audio")


def read_esc50(source: str, audio: str, report: sources.Report) -> Listing:
  path = os.path.join(source, "meta", "esc50.csv") if os.path.isdir(source) else source
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--source {source}: no {path}; give ESC-50's root folder "
                            "(holding meta/esc50.csv) or the CSV itself.")
  _columns(path, ESC50_COLUMNS, "ESC-50's meta/esc50.csv (filename,fold,target,category,...)")
  rows, names = [], {}
  for where, row in _csv_rows(path, report):
    try:
      fold, target = int(row["fold"]), int(row["target"])
    except (KeyError, ValueError):
      report.add("malformed_record", where)
      continue
    category = " ".join(row.get("category", "").replace("_", " ").split())
    if not row.get("filename") or not category or target < 0:
      report.add("malformed_record", where)
      continue
    if names.setdefault(target, category) != category:
      raise ValueError(f"{where}: target {target} is {category!r} here but "
                       f"{names[target]!r} earlier; fix the CSV so each target has one "
                       "category.")
    if fold not in ESC50_SPLITS:
      report.add("unknown_split", where)
      continue
    rows.append((where, row["filename"], ESC50_SPLITS[fold], target, category))
  if gaps := sorted(set(range(max(names, default=-1) + 1)) - set(names)):
    raise ValueError(f"{path} has no clip of target(s) {gaps}; labels must number the "
                     "classes 0..C-1 without gaps.")
  records = [sources.Record(_clean_id(name), os.path.join(audio, name), [category],
                            split, where)
             for where, name, split, _, category in rows]
  labels = {_clean_id(name): target for _, name, _, target, _ in rows}
  return Listing(records, tuple(names[t] for t in range(len(names))), labels)


# format -> reader(source, audio directory, report) -> Listing.
READERS = {"audiocaps": read_audiocaps, "clotho": read_clotho, "esc50": read_esc50}
assert tuple(READERS) == audio_text.FORMATS
