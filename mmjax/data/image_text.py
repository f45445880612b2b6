"""Prepared image-text datasets: the tfds builder that writes them, and the reader.

A dataset is made once by `python -m mmjax.data.prepare` and read here. Every
example of every split is

  {"image": bytes,            # encoded 8-bit RGB JPEG or PNG
   "captions": list[str],     # one or more, stripped, never empty
   "image_id": str}           # unique within the dataset

Reader API (what the input pipeline is written against):

  dataset_dir(data_dir, name) -> str            where the dataset lives
  open_split(data_dir, name, split) -> ImageTextSource
      random access: len(src), src[i] -> the dict above; picklable, so grain
      workers can hold it. split is one of SPLITS; all three always exist and
      hold at least one example.
  train_captions(data_dir, name, limit=None) -> Iterator[str]
      the train split's captions, for training the tokenizer.

A missing dataset raises FileNotFoundError naming the prepare command; one
written by another version of this format raises ValueError asking to re-run
prepare with --overwrite.

On disk, `<data_dir>/<name>/` holds

  mmjax_dataset.json      format marker, written last (see MARKER_FILE)
  prepare_report.json     what prepare skipped, dropped or changed, and why
  1.0.0/                  a standard tfds dataset directory: dataset_info.json,
                          features.json, <name>-{train,val,test}.array_record-*

so `tfds.builder_from_directory("<data_dir>/<name>/1.0.0")` opens it as well.
Images are handed to tfds already encoded and read back with tfds's decoding
of the image feature skipped, so neither writing nor reading needs TensorFlow;
decoding happens in the input pipeline, where it can be fused with cropping.
"""

import json
import os
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

# Bump when the features or their meaning change: readers refuse other versions.
FORMAT_VERSION = 1
TFDS_VERSION = "1.0.0"
SPLITS = ("train", "val", "test")
MARKER_FILE = "mmjax_dataset.json"
REPORT_FILE = "prepare_report.json"
FORMATS = ("coco_karpathy", "jsonl", "tsv")  # the source formats prepare reads


def dataset_dir(data_dir: str, name: str) -> str:
  """The directory that holds dataset `name` under `data_dir`."""
  return os.path.join(os.fspath(data_dir), name)


def prepare_command(data_dir: str, name: str, source_format: str | None = None,
                    source: str = "PATH", images: str = "DIR",
                    overwrite: bool = False, *, formats: tuple = FORMATS,
                    files_flag: str = "--images", extra: str = "") -> str:
  """The command line that (re)builds dataset `name`, for error messages.

  formats, files_flag, extra: the source formats to offer when name is none
  of them, the flag naming the media folder, and further flags (audio
  datasets: their own formats, --audio and --sample-rate).
  """
  if source_format is None:
    source_format = name if name in formats else "{" + ",".join(formats) + "}"
  command = (f"python -m mmjax.data.prepare {source_format} --source {source} "
             f"{files_flag} {images} --data-dir {data_dir} --name {name}{extra}")
  return command + " --overwrite" if overwrite else command


def features(image_format: str = "jpeg") -> tfds.features.FeaturesDict:
  """The tfds features of one example (see the module docstring)."""
  return tfds.features.FeaturesDict({
      # Handed over as encoded bytes: tfds stores them as they are, with no
      # TensorFlow encode; the format is recorded as metadata.
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "image_id": tfds.features.Text(),
  })


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes examples that are already encoded; one builder per prepare run."""

  VERSION = tfds.core.Version(TFDS_VERSION)
  # tfds looks up the builder's source file through `importlib_resources`, a
  # package it declares only for Python < 3.9 (tensorflow/datasets#11212), to
  # find download checksums. There are no downloads here, so skip the lookup.
  code_path = None

  def __init__(self, *, name: str, examples: Mapping[str, Iterable], image_format: str,
               data_dir: str):
    self.name = name  # tfds reads the name before __init__ returns
    self._examples = examples
    self._image_format = image_format
    super().__init__(data_dir=data_dir, file_format="array_record")

  def _info(self) -> tfds.core.DatasetInfo:
    # disable_shuffling keeps the examples in key (= source) order; readers
    # shuffle with grain, so the files need not.
    return tfds.core.DatasetInfo(
        builder=self, description="Image-text pairs prepared by mmjax.data.prepare.",
        features=features(self._image_format), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(examples)
            for split, examples in self._examples.items()}

  def _generate_examples(self, examples):
    yield from examples

  # tfds prints "Downloading and preparing ... to <dir>" around the build; the
  # directory is a temporary one that prepare renames, so the lines mislead.
  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    pass


def write_tfds(tfds_data_dir: str, name: str, examples: Mapping[str, Iterable],
               image_format: str) -> dict[str, int]:
  """Writes a tfds dataset to `<tfds_data_dir>/<name>/TFDS_VERSION/`.

  examples: split -> iterable of (key, example); keys are ints that give the
    order within the split; examples are dicts as in the module docstring, the
    image already encoded in `image_format`. Splits are written in the order of
    the mapping. tfds refuses a split without examples (AssertionError).
  Returns {split: number of examples}.
  """
  builder = _Builder(name=name, examples=examples, image_format=image_format,
                     data_dir=tfds_data_dir)
  builder.download_and_prepare()
  splits = builder.info.splits
  return {split: splits[split].num_examples for split in SPLITS if split in splits}


def write_marker(path: str, contents: dict) -> None:
  """Writes the format marker into dataset directory `path`: the last file of a build."""
  with open(os.path.join(path, MARKER_FILE), "w") as f:
    json.dump({"format_version": FORMAT_VERSION, **contents}, f, indent=2)


def read_marker(path: str) -> dict | None:
  """The marker of the dataset directory `path`, or None if it has none."""
  try:
    with open(os.path.join(path, MARKER_FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable: treated as another format version


def check_dataset(data_dir: str, name: str) -> dict:
  """Returns the marker of a complete dataset of this format version, or raises.

  FileNotFoundError: nothing prepared at `dataset_dir(data_dir, name)` (the
    message names the prepare command); ValueError: an incomplete directory or
    another format version (the message says to re-run with --overwrite).
  """
  if str(data_dir).startswith(("gs://", "s3://")):
    raise ValueError(
        f"data.data_dir={data_dir!r}: prepared datasets are read from a local disk "
        "(grain reads array_record files by local path). Copy it to each host, e.g. "
        f"`gcloud storage cp -r {data_dir}/{name} /data/`, and pass "
        "--config.data.data_dir=/data; workdirs, teachers and warm starts may stay on gs://.")
  path = dataset_dir(data_dir, name)
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"no prepared dataset {name!r} in {data_dir} ({path} does not exist). "
        f"Prepare it with: {prepare_command(data_dir, name)}")
  marker = read_marker(path)
  if marker is None:
    raise ValueError(
        f"{path} is not a complete mmjax dataset (no {MARKER_FILE}). Rebuild it with: "
        f"{prepare_command(data_dir, name, overwrite=True)}")
  if marker.get("format_version") != FORMAT_VERSION:
    raise ValueError(
        f"{path} was prepared in dataset format version {marker.get('format_version')}, "
        f"but this mmjax reads version {FORMAT_VERSION}. Re-run prepare with --overwrite: "
        f"{_rebuild_command(data_dir, name, marker)}")
  return marker


def _rebuild_command(data_dir: str, name: str, marker: dict) -> str:
  """The command recorded in the marker, with --overwrite, when it has one."""
  settings = marker.get("settings") or {}
  try:
    return prepare_command(data_dir, name, settings["format"], settings["source"],
                           settings["images"], overwrite=True)
  except (KeyError, TypeError):
    return prepare_command(data_dir, name, overwrite=True)


class ImageTextSource:
  """Random access to one split: `len(src)`, `src[i]` -> {"image", "captions", "image_id"}.

  Wraps tfds's ArrayRecord data source; reading decodes the text fields but
  leaves the image encoded.
  """

  def __init__(self, tfds_source, name: str, split: str):
    self._source = tfds_source
    self.name = name
    self.split = split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {self.name}/{self.split} "
                       f"of {len(self)} examples")
    return self._to_python(self._source[index % len(self)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    """Batched read: one call into ArrayRecord for many indices."""
    return [self._to_python(x)
            for x in self._source.__getitems__([int(i) for i in indices])]

  def __repr__(self) -> str:
    return f"ImageTextSource({self.name}/{self.split}, {len(self)} examples)"

  @staticmethod
  def _to_python(example: dict) -> dict:
    """A stored example -> the dict `src[i]` returns (subclasses add fields)."""
    return {"image": bytes(example["image"]),
            "captions": [c.decode("utf-8") for c in example["captions"]],
            "image_id": example["image_id"].decode("utf-8")}


def open_split(data_dir: str, name: str, split: str) -> ImageTextSource:
  """Opens `split` ("train", "val" or "test") of dataset `name` for random access."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r} is not one of {SPLITS}.")
  check_dataset(data_dir, name)
  builder = tfds.builder_from_directory(os.path.join(dataset_dir(data_dir, name), TFDS_VERSION))
  source = builder.as_data_source(split=split,
                                  decoders={"image": tfds.decode.SkipDecoding()})
  return ImageTextSource(source, name, split)


def train_captions(data_dir: str, name: str, limit: int | None = None) -> Iterator[str]:
  """Yields the captions of the train split, for training a tokenizer.

  limit: read at most this many images, evenly spaced over the split (reading
    an example reads its image bytes too, so a large split is better sampled).
  """
  source = open_split(data_dir, name, "train")
  n = len(source)
  if limit is None or limit >= n:
    indices = range(n)
  else:
    indices = np.linspace(0, n - 1, num=max(limit, 0)).round().astype(int)
  for i in indices:
    yield from source[i]["captions"]
