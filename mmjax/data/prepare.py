"""Prepares an image-text dataset: captions file + image directory -> tfds dataset.

  python -m mmjax.data.prepare FORMAT --source PATH --images DIR --data-dir DIR
      [--name NAME] [--overwrite] [--image-format {jpeg,png}] [--max-side 1024]
      [--min-side 8] [--val-fraction 0.01] [--test-fraction 0.01] [--workers N]

FORMAT is the layout of --source (image paths are relative to --images):
  coco_karpathy  Karpathy's split JSON (dataset_coco.json, dataset_flickr30k.json):
                 {"images": [{"filepath": "val2014", "filename": "x.jpg",
                 "cocoid": 1, "split": "train", "sentences": [{"raw": "..."}]}]}.
                 image_id is cocoid, else the path (Flickr30k).
  jsonl          one image per line: {"image": "a/b.jpg", "captions": ["..."],
                 "split": "train", "id": "..."}; split (default train) and id
                 (default the path) are optional; a single caption may be a
                 string.
  tsv            image_path<TAB>caption rows, no quoting; the rows of one image
                 are merged, in order. An optional header row is skipped.
Split names: train, restval (joins train), val (or validation, dev), test.

The dataset is written to <data-dir>/<name> (default name: FORMAT) in the
format of mmjax.data.image_text, which also reads it. Splits are train, val and
test, each with at least one example, so evaluation always has data. When the
source names no val (or test) image, as tsv never does, that split is carved
from train: an image goes to val when a uniform number drawn from the SHA-256
of its image_id is below --val-fraction, to test when it is in the next
--test-fraction. The draw depends on the image alone, so adding images to a
source never moves the others between splits. A band that catches no image
(a small dataset) takes the remaining train image with the smallest draw.

Bad input never stops the build: each problem is counted under a reason and
the first few places (image path or file:line) are kept. Skipped records:
missing/unreadable/non-image/corrupt (truncated) files, images too small
(--min-side) or beyond PIL's decompression-bomb limit, records left without
captions, duplicate image ids (the first usable one is kept), malformed JSON
or records, lines that are not UTF-8, unknown split names. Dropped captions:
empty or whitespace-only, not UTF-8, not a string, repeated for the same image.
Noted, kept: images converted to 8-bit RGB (from grayscale, palette, RGBA,
CMYK, 16-bit, ...), EXIF-rotated or downscaled to --max-side, captions longer
than sources.LONG_CAPTION characters (the tokenizer truncates them). The
counts are printed at the end and saved in <dataset>/prepare_report.json. A
val or test split left with no usable image fails the build with the reasons
(these splits are written first, so this costs little).

The build goes to a hidden sibling directory and is renamed into place when
complete; the format marker is written last. An interrupted build leaves
nothing that reads as a dataset, and its leftovers are removed by the next run
(so run one prepare per dataset at a time). A prepared dataset is reused; one
prepared from other input or settings, or in another format version, is an
error until --overwrite rebuilds it.

This module holds the command line and the build (`prepare`: images encoded
by mmjax.data.preprocess, written by mmjax.data.image_text); reading the
source, cleaning captions and carving val/test are in mmjax.data.sources.

Audio: the formats audiocaps, clotho and esc50 take --audio DIR (the folder of
audio files) instead of --images, and --sample-rate, --min-seconds,
--max-seconds; they are built by mmjax.data.prepare_audio, whose docstring
gives the layouts and what is checked.
"""

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from typing import Callable, Iterator, NamedTuple

from PIL import Image
import tqdm

from mmjax.data import image_text
from mmjax.data import preprocess
from mmjax.data import sources

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a tfds dataset name


class Result(NamedTuple):
  path: str  # the dataset directory
  reused: bool  # True when an existing dataset was kept as it was
  report: dict  # the contents of prepare_report.json


def _encode_ordered(records: list[sources.Record], encode: Callable,
                    executor: concurrent.futures.Executor,
                    window: int) -> Iterator[tuple[sources.Record, object]]:
  """(record, EncodedImage or BadImage) in the order of `records`.

  At most `window` images are in flight, so memory stays bounded however slow
  the writer is; the order, hence the dataset, does not depend on the workers.
  """
  pending = collections.deque()
  try:
    for record in records:
      pending.append((record, executor.submit(encode, record.image_path)))
      if len(pending) >= window:
        record, future = pending.popleft()
        yield record, future.result()
    while pending:
      record, future = pending.popleft()
      yield record, future.result()
  finally:
    for _, future in pending:
      future.cancel()


def _encoder(image_format: str, max_side: int, min_side: int, quality: int) -> Callable:
  def encode(path: str):
    try:
      return preprocess.encode_image(path, image_format, max_side=max_side,
                                     min_side=min_side, quality=quality)
    except preprocess.BadImage as e:
      return e
  return encode


def _examples(split: str, records: list[sources.Record], encoded: Iterator,
              report: sources.Report, bar) -> Iterator[tuple[int, dict]]:
  """(key, example) for the records of one split whose image could be stored."""
  before = collections.Counter(report.counts)
  kept = 0
  for key, (record, result) in enumerate(encoded):
    bar.update(1)
    if isinstance(result, preprocess.BadImage):
      report.add(result.reason, record.image_path)
      continue
    for change in result.changes:
      report.add(change, record.image_path)
    kept += 1
    yield key, {"image": result.data, "captions": record.captions,
                "image_id": record.image_id}
  if not kept:
    reasons = report.counts - before
    raise ValueError(
        f"none of the {len(records)} images of split {split!r} could be stored ("
        + "; ".join(f"{r} {n}: {', '.join(report.samples[r])}" for r, n in reasons.items())
        + "); val and test need at least one example.")


def _remove_leftovers(data_dir: str, name: str) -> None:
  for entry in os.listdir(data_dir):
    if entry.startswith(f".{name}.tmp-"):
      shutil.rmtree(os.path.join(data_dir, entry), ignore_errors=True)


def _settings_differ(old: dict, new: dict) -> list[str]:
  return [f"{key}: {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]


def prepare(source_format: str, source: str, images: str, data_dir: str,
            name: str | None = None, *, overwrite: bool = False,
            image_format: str = "jpeg", max_side: int = preprocess.MAX_SIDE,
            min_side: int = preprocess.MIN_SIDE, quality: int = preprocess.JPEG_QUALITY,
            val_fraction: float = 0.01, test_fraction: float = 0.01,
            workers: int | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> Result:
  """Builds dataset `name` (default: source_format) under data_dir; see the module docstring.

  Raises ValueError or OSError (FileNotFoundError for a missing --source or
  --images) with a message that says what to change, before any image is read
  when the problem is in the arguments or the source file.
  """
  name = name or source_format
  if source_format not in sources.READERS:
    raise ValueError(f"format {source_format!r} is not one of {tuple(sources.READERS)}.")
  if not _NAME.match(name):
    raise ValueError(f"--name {name!r} must be lower case letters, digits and _, "
                     "starting with a letter (a tfds dataset name).")
  if not os.path.isfile(source):
    raise FileNotFoundError(f"--source {source} is not a file.")
  if not os.path.isdir(images):
    raise FileNotFoundError(f"--images {images} is not a directory.")
  if image_format not in preprocess.IMAGE_FORMATS:
    raise ValueError(f"--image-format {image_format!r} is not one of "
                     f"{preprocess.IMAGE_FORMATS}.")
  if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
          and val_fraction + test_fraction < 1):
    raise ValueError("--val-fraction and --test-fraction must be in [0, 1) with a sum below 1.")
  if not 1 <= min_side <= max_side:
    raise ValueError(f"need 1 <= --min-side ({min_side}) <= --max-side ({max_side}).")

  settings = {"format": source_format, "source": os.path.realpath(source),
              "images": os.path.realpath(images), "image_format": image_format,
              "max_side": max_side, "min_side": min_side, "quality": quality,
              "val_fraction": val_fraction, "test_fraction": test_fraction}
  existing = reuse_existing(data_dir, name, settings, overwrite=overwrite,
                            check_dataset=image_text.check_dataset, log=log)
  if existing is not None:
    return existing

  report = sources.Report()
  splits = sources.collect(sources.READERS[source_format](source, images, report), report)
  splits = sources.carve(splits, val_fraction, test_fraction)
  total = sum(len(records) for records in splits.values())
  log(f"preparing {name}: {total} images "
      f"({', '.join(f'{s} {len(r)}' for s, r in splits.items())})")

  workers = workers or os.cpu_count() or 1
  encode = _encoder(image_format, max_side, min_side, quality)

  def write(temporary: str) -> dict:
    # PIL's threads release the GIL while decoding, resizing and encoding.
    with concurrent.futures.ThreadPoolExecutor(workers) as executor, \
        tqdm.tqdm(total=total, unit="img", desc=f"encoding {name}",
                  disable=not progress) as bar, warnings.catch_warnings():
      # Images above Image.MAX_IMAGE_PIXELS are downscaled on purpose; those
      # PIL refuses outright are counted as too_large.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      # val and test first: an empty one fails before the long train split.
      examples = {split: _examples(split, splits[split],
                                   _encode_ordered(splits[split], encode, executor,
                                                   4 * workers), report, bar)
                  for split in ("val", "test", "train")}
      counts = image_text.write_tfds(temporary, name, examples, image_format)
    return report.to_json(counts)

  path, summary = build_in_place(data_dir, name, settings, write, image_text.write_marker)
  _log_summary(log, path, summary)
  return Result(path, False, summary)


def reuse_existing(data_dir: str, name: str, settings: dict, *, overwrite: bool,
                   check_dataset: Callable[[str, str], dict],
                   log: Callable[[str], None]) -> Result | None:
  """Readies data_dir for building dataset `name`, or finds it built already.

  Creates data_dir and removes what killed builds left there. Returns the
  dataset already at `name` when not `overwrite` and it was prepared with
  these settings (reused: its marker checked by `check_dataset`, which raises
  for another format version); raises ValueError when it was prepared with
  others; returns None when it should be built.
  """
  path = image_text.dataset_dir(data_dir, name)
  os.makedirs(data_dir, exist_ok=True)
  _remove_leftovers(data_dir, name)
  if not os.path.exists(path) or overwrite:
    return None
  marker = check_dataset(data_dir, name)
  differ = _settings_differ(marker.get("settings") or {}, settings)
  if differ:
    raise ValueError(f"{path} was prepared from other input or settings "
                     f"({'; '.join(differ)}). Pass --overwrite to rebuild it, or "
                     "--name to prepare a separate dataset.")
  log(f"{path} is already prepared ({marker.get('examples')}); reusing it "
      "(--overwrite rebuilds it).")
  with open(os.path.join(path, image_text.REPORT_FILE)) as f:
    return Result(path, True, json.load(f))


def build_in_place(data_dir: str, name: str, settings: dict,
                   write: Callable[[str], dict],
                   write_marker: Callable[[str, dict], None]) -> tuple[str, dict]:
  """Builds dataset `name` in a temporary directory, then renames it into place.

  `write(temporary)` writes the tfds dataset to <temporary>/<name> and returns
  the report (sources.Report.to_json). This saves the report, then the marker
  (`write_marker(dir, contents)`, last), then puts the directory at
  image_text.dataset_dir(data_dir, name), replacing the dataset there. The
  temporary directory goes in any case, so an interrupted build leaves no
  dataset. Returns (the dataset directory, the report).
  """
  path = image_text.dataset_dir(data_dir, name)
  temporary = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=data_dir)
  try:
    summary = write(temporary)
    built = os.path.join(temporary, name)
    with open(os.path.join(built, image_text.REPORT_FILE), "w") as f:
      json.dump(summary, f, indent=2)
    write_marker(built, {
        "name": name, "settings": settings, "examples": summary["examples"],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    if os.path.exists(path):  # --overwrite: the old one goes with the temporary dir
      os.rename(path, os.path.join(temporary, "replaced"))
    os.rename(built, path)
  finally:
    _remove_temporary(temporary)
  return path, summary


def _remove_temporary(temporary: str) -> None:
  shutil.rmtree(temporary, ignore_errors=True)


def _log_summary(log: Callable[[str], None], path: str, summary: dict) -> None:
  log(f"prepared {path}: " + ", ".join(f"{s} {n}" for s, n in summary["examples"].items()))
  for group, title in ((sources.SKIPPED, "skipped"), (sources.DROPPED, "captions dropped"),
                       (sources.NOTED, "kept, noted")):
    if summary[group]:
      log(f"  {title}: " + ", ".join(f"{r} {n}" for r, n in summary[group].items()))
  for reason, places in summary["first"].items():
    if sources.REASONS.get(reason) != sources.NOTED:
      log(f"    {reason}: " + ", ".join(places))
  log(f"  report: {os.path.join(path, image_text.REPORT_FILE)}")


def main(argv: list[str] | None = None) -> int:
  summary, _, details = __doc__.partition("\n\n")
  parser = argparse.ArgumentParser(
      prog="python -m mmjax.data.prepare", description=summary, epilog=details,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  # The audio build imports this module: imported here, not at the top.
  from mmjax.data import audio_io, audio_sources, prepare_audio  # pylint: disable=g-import-not-at-top
  audio_formats = tuple(audio_sources.READERS)
  parser.add_argument("format", choices=(*sources.READERS, *audio_formats),
                      help="layout of --source")
  parser.add_argument("--source", required=True,
                      help="the captions file (audio formats: a CSV or its folder)")
  parser.add_argument("--images", help="directory the image paths are relative to")
  parser.add_argument("--audio", help="audio formats: the folder of audio files (esc50: "
                      "default <source>/audio)")
  parser.add_argument("--sample-rate", type=int, default=prepare_audio.SAMPLE_RATE,
                      help="audio formats: the rate clips are stored at (Hz)")
  parser.add_argument("--min-seconds", type=float, default=audio_io.MIN_SECONDS,
                      help="audio formats: skip shorter clips")
  parser.add_argument("--max-seconds", type=float, default=audio_io.MAX_SECONDS,
                      help="audio formats: keep the start of longer clips")
  parser.add_argument("--data-dir", required=True, help="where datasets are prepared")
  parser.add_argument("--name", help="dataset name (default: FORMAT)")
  parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
  parser.add_argument("--image-format", choices=preprocess.IMAGE_FORMATS, default="jpeg")
  parser.add_argument("--quality", type=int, default=preprocess.JPEG_QUALITY, help="JPEG quality")
  parser.add_argument("--max-side", type=int, default=preprocess.MAX_SIDE,
                      help="downscale images whose longer side exceeds this (px)")
  parser.add_argument("--min-side", type=int, default=preprocess.MIN_SIDE,
                      help="skip images with a side below this (px)")
  parser.add_argument("--val-fraction", type=float, default=0.01,
                      help="share of train carved into val when the source has none")
  parser.add_argument("--test-fraction", type=float, default=0.01,
                      help="share of train carved into test when the source has none")
  parser.add_argument("--workers", type=int, default=None,
                      help="image encoding threads (default: one per CPU)")
  args = parser.parse_args(argv)

  from absl import logging
  import tensorflow_datasets as tfds
  logging.set_verbosity(logging.ERROR)  # tfds warns about folders it is creating
  tfds.display_progress_bar(False)  # ours counts images across all splits
  if args.format in audio_formats:
    if args.images:
      parser.error(f"{args.format} is an audio format: give --audio DIR, not --images.")
  elif not args.images:
    parser.error(f"{args.format} needs --images DIR (the folder the image paths are "
                 "relative to).")
  try:
    if args.format in audio_formats:
      prepare_audio.prepare(args.format, args.source, args.audio, args.data_dir, args.name,
                            overwrite=args.overwrite, sample_rate=args.sample_rate,
                            min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                            val_fraction=args.val_fraction,
                            test_fraction=args.test_fraction, workers=args.workers)
    else:
      prepare(args.format, args.source, args.images, args.data_dir, args.name,
              overwrite=args.overwrite, image_format=args.image_format,
              max_side=args.max_side, min_side=args.min_side, quality=args.quality,
              val_fraction=args.val_fraction, test_fraction=args.test_fraction,
              workers=args.workers)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
