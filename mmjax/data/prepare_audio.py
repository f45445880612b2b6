"""Prepares an audio-text dataset: captions or labels + a folder of audio
files -> a tfds dataset of clips decoded at one sample rate.

  python -m mmjax.data.prepare {audiocaps,clotho,esc50} --source PATH --audio DIR
      --data-dir DIR [--name NAME] [--sample-rate 16000] [--min-seconds 1]
      [--max-seconds 30] [--overwrite] [--workers N]

The layouts of --source are in mmjax.data.audio_sources; the stored examples
in mmjax.data.audio_text. Every file is decoded (mmjax.data.audio_io) to mono
at --sample-rate and stored as 16-bit FLAC, so training only decodes that
FLAC: it never resamples, downmixes or converts a source format again.

Bad input never stops the build; each problem is counted under its reason
and the first few files or CSV lines are named, in the printed summary and in
<dataset>/prepare_report.json. Skipped clips: missing_audio,
unreadable_audio, truncated_audio, corrupt_audio, silent_audio,
too_short_audio (under --min-seconds), and as for images malformed_record,
unknown_split, duplicate_id, no_captions (captions dropped: empty_caption,
non_utf8_caption, duplicate_caption). Fixed and counted:
resampled, downmixed, converted_<sample format> (anything but 16-bit PCM:
8/24/32-bit, float, Vorbis, ...), clipped, cropped (beyond --max-seconds, the
start is kept). The report also gives the seconds of audio stored per split.

Building, reuse, --overwrite and the val/test carving of a source without
them are as for image-text datasets (mmjax.data.prepare).
"""

import concurrent.futures
import functools
import os
from typing import Callable, Iterator

import tqdm

from mmjax.data import audio_io
from mmjax.data import audio_sources
from mmjax.data import audio_text
from mmjax.data import prepare as prepare_lib
from mmjax.data import sources

SAMPLE_RATE = 16_000  # the AST / ImageBind front end's; CLAP's is 48 kHz


def _decoder(sample_rate: int, min_seconds: float, max_seconds: float) -> Callable:
  def decode(path: str):
    try:
      clip = audio_io.read(path, sample_rate, min_seconds=min_seconds,
                           max_seconds=max_seconds)
    except audio_io.BadAudio as e:
      return e
    return clip.changes, audio_text.encode_clip(clip.wave, sample_rate), len(clip.wave)
  return decode


def _examples(split: str, records: list, decoded: Iterator, labels: dict,
              report: sources.Report, seconds: dict, sample_rate: int,
              bar) -> Iterator[tuple[int, dict]]:
  """(key, example) for the records of one split whose audio could be stored."""
  kept = 0
  bad = []
  for key, (record, result) in enumerate(decoded):
    bar.update(1)
    if isinstance(result, audio_io.BadAudio):
      report.add(result.reason, record.image_path)
      bad.append(f"{result.reason}: {result}")
      continue
    changes, flac, samples = result
    for change in changes:
      report.add(change, record.image_path)
    kept += 1
    seconds[split] = seconds.get(split, 0.0) + samples / sample_rate
    yield key, {"audio": flac, "captions": record.captions, "audio_id": record.image_id,
                "label": labels.get(record.image_id, audio_text.NO_LABEL)}
  if not kept:
    raise ValueError(f"none of the {len(records)} clips of split {split!r} could be "
                     f"stored ({'; '.join(bad[:sources.SAMPLES_PER_REASON])}); val and "
                     "test need at least one example.")


def prepare(source_format: str, source: str, audio: str | None, data_dir: str,
            name: str | None = None, *, overwrite: bool = False,
            sample_rate: int = SAMPLE_RATE, min_seconds: float = audio_io.MIN_SECONDS,
            max_seconds: float = audio_io.MAX_SECONDS, val_fraction: float = 0.01,
            test_fraction: float = 0.01, workers: int | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> prepare_lib.Result:
  """Builds audio dataset `name` (default: source_format) under data_dir; see
  the module docstring. `audio` may be None for esc50 (<root>/audio).

  Raises ValueError or OSError with a message that says what to change, before
  any audio is read when the problem is in the arguments or the source file.
  """
  name = name or source_format
  if source_format not in audio_sources.READERS:
    raise ValueError(f"format {source_format!r} is not one of {tuple(audio_sources.READERS)}.")
  if not prepare_lib._NAME.match(name):  # pylint: disable=protected-access
    raise ValueError(f"--name {name!r} must be lower case letters, digits and _, "
                     "starting with a letter (a tfds dataset name).")
  if not os.path.exists(source):
    raise FileNotFoundError(f"--source {source} does not exist.")
  if audio is None and source_format == "esc50":
    audio = audio_sources.esc50_audio_dir(source)
  if audio is None or not os.path.isdir(audio):
    raise FileNotFoundError(f"--audio {audio} is not a directory (the folder of audio files).")
  if not (isinstance(sample_rate, int) and 1000 <= sample_rate <= 384_000):
    raise ValueError(f"--sample-rate {sample_rate} must be an integer number of Hz in "
                     "[1000, 384000], e.g. 16000 (AST) or 48000 (CLAP).")
  if not 0 <= min_seconds <= max_seconds or max_seconds <= 0:
    raise ValueError(f"need 0 <= --min-seconds ({min_seconds}) <= --max-seconds "
                     f"({max_seconds}), with --max-seconds > 0.")
  if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
          and val_fraction + test_fraction < 1):
    raise ValueError("--val-fraction and --test-fraction must be in [0, 1) with a sum below 1.")

  settings = {"format": source_format, "source": os.path.realpath(source),
              "audio": os.path.realpath(audio), "sample_rate": sample_rate,
              "min_seconds": min_seconds, "max_seconds": max_seconds,
              "val_fraction": val_fraction, "test_fraction": test_fraction}
  existing = prepare_lib.reuse_existing(
      data_dir, name, settings, overwrite=overwrite,
      check_dataset=audio_text.check_dataset,  # also refuses an image dataset
      log=log)
  if existing is not None:
    return existing

  report = sources.Report()
  listing = audio_sources.READERS[source_format](source, audio, report)
  splits = sources.carve(sources.collect(listing.records, report), val_fraction, test_fraction)
  total = sum(len(records) for records in splits.values())
  log(f"preparing {name}: {total} clips "
      f"({', '.join(f'{s} {len(r)}' for s, r in splits.items())}) at {sample_rate} Hz")

  workers = workers or os.cpu_count() or 1
  decode = _decoder(sample_rate, min_seconds, max_seconds)

  def write(temporary: str) -> dict:
    seconds = {}
    # libsndfile and libsoxr run outside the GIL, so threads decode in parallel.
    with concurrent.futures.ThreadPoolExecutor(workers) as executor, \
        tqdm.tqdm(total=total, unit="clip", desc=f"decoding {name}",
                  disable=not progress) as bar:
      # val and test first: an empty one fails before the long train split.
      examples = {split: _examples(
          split, splits[split],
          prepare_lib._encode_ordered(splits[split], decode, executor, 4 * workers),  # pylint: disable=protected-access
          listing.labels or {}, report, seconds, sample_rate, bar)
                  for split in ("val", "test", "train")}
      counts = audio_text.write_tfds(temporary, name, examples)
    summary = report.to_json(counts)
    summary["seconds"] = {split: round(seconds.get(split, 0.0), 3) for split in counts}
    return summary

  path, summary = prepare_lib.build_in_place(
      data_dir, name, settings, write,
      functools.partial(audio_text.write_marker, sample_rate=sample_rate,
                        classes=listing.classes))
  prepare_lib._log_summary(log, path, summary)  # pylint: disable=protected-access
  log("  audio stored: " + ", ".join(f"{s} {_duration(v)}"
                                     for s, v in summary["seconds"].items()))
  return prepare_lib.Result(path, False, summary)


def _duration(seconds: float) -> str:
  if seconds >= 3600:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
