"""Prepared audio-text datasets: how clips are stored, the tfds builder that
writes them, and the reader.

A dataset is made once by `python -m mmjax.data.prepare {audiocaps,clotho,esc50}`
(mmjax/data/prepare_audio.py) and read here. Every example of every split is

  {"audio": bytes,            # the clip: mono 16-bit FLAC at the dataset's rate
   "captions": list[str],     # one or more, stripped, never empty (ESC-50: the class name)
   "audio_id": str,           # unique within the dataset
   "label": int}              # class index into the marker's "classes", -1 unlabelled

Why 16-bit FLAC: lossless for the 16-bit PCM that AudioCaps, Clotho and ESC-50
are distributed in, smaller than raw PCM (by how much depends on the sound:
70% of the bytes for a tonal clip with a little noise, 97% for loud white
noise), and self-describing (the rate and channel count travel in each record,
so the reader can check them); a 10 s clip at 16 kHz decodes in a few
milliseconds on one core, far less than a training step spends on it. Sources
with more bits lose only what lies below 16-bit quantisation noise (about
-96 dBFS). Samples are quantised here (x 32768, rounded, clipped), the inverse of
soundfile's int16 reading, so a 16-bit source is stored bit for bit;
libsndfile's own float conversion scales by 32767 and does not clip.

On disk, `<data_dir>/<name>/` is laid out as an image-text dataset
(mmjax/data/image_text.py: `mmjax_dataset.json`, `prepare_report.json`,
`1.0.0/`), and its marker adds

  "modality": "audio", "audio_version": AUDIO_VERSION,
  "sample_rate": Hz of every clip, "classes": [names] or null,

so the input pipeline knows to produce an "audio" field, at which rate, and
the zero-shot evaluator which names the labels have. Reader API:

  open_split(data_dir, name, split) -> AudioTextSource (len, [i], picklable)
  check_dataset(data_dir, name) -> the marker, or an error naming the fix
  train_captions(data_dir, name, limit=None) -> Iterator[str]
  encode_clip(wave, sample_rate) -> bytes;  decode_clip(data, sample_rate) -> float32 [N]
"""

import io
import os
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import soundfile
import tensorflow_datasets as tfds

from mmjax.data import image_text

# Bump when the stored audio or the features change: readers refuse other versions.
AUDIO_VERSION = 1
MODALITY = "audio"
FORMATS = ("audiocaps", "clotho", "esc50")  # the source formats prepare_audio reads
NO_LABEL = -1


# ----------------------------------------------------------------- clips


def encode_clip(wave: np.ndarray, sample_rate: int) -> bytes:
  """float [N] in [-1, 1] -> mono 16-bit FLAC bytes."""
  pcm = np.clip(np.round(np.asarray(wave, np.float64) * 32768), -32768, 32767).astype(np.int16)
  buf = io.BytesIO()
  soundfile.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
  return buf.getvalue()


def decode_clip(data: bytes, sample_rate: int) -> np.ndarray:
  """A stored clip -> float32 [N] (int16 / 32768).

  Raises ValueError when the bytes are not a mono clip at `sample_rate`
  (a damaged record, or a dataset read with another rate than it holds).
  """
  try:
    with soundfile.SoundFile(io.BytesIO(data)) as f:
      if f.samplerate != sample_rate or f.channels != 1:
        raise ValueError(f"the clip is {f.channels} channel(s) at {f.samplerate} Hz, not "
                         f"mono at {sample_rate} Hz")
      wave = f.read(dtype="float32")
      if len(wave) != f.frames:
        raise ValueError(f"the clip holds {len(wave)} of its {f.frames} frames")
  except RuntimeError as e:  # soundfile.LibsndfileError
    raise ValueError(f"the clip cannot be decoded ({e})") from None
  return wave


# ----------------------------------------------------------------- writing


def features() -> tfds.features.FeaturesDict:
  """The tfds features of one example (see the module docstring)."""
  return tfds.features.FeaturesDict({
      # Bytes stored as they are: tfds's Audio feature would decode them on
      # reading, through TensorFlow.
      "audio": tfds.features.Tensor(shape=(), dtype=np.object_),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "audio_id": tfds.features.Text(),
      "label": tfds.features.Scalar(dtype=np.int64),
  })


class _Builder(image_text._Builder, skip_registration=True):  # pylint: disable=protected-access
  """image_text's builder (already-encoded examples, no downloads, quiet) with
  the audio features."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description="Audio-text pairs prepared by mmjax.data.prepare.",
        features=features(), disable_shuffling=True)


def write_tfds(tfds_data_dir: str, name: str,
               examples: Mapping[str, Iterable]) -> dict[str, int]:
  """Writes a tfds dataset to `<tfds_data_dir>/<name>/1.0.0/`.

  examples: split -> iterable of (key, example), examples as in the module
    docstring with "audio" already encoded (encode_clip). Splits are written
    in the order of the mapping; tfds refuses one without examples.
  Returns {split: number of examples}.
  """
  builder = _Builder(name=name, examples=examples, image_format="unused",
                     data_dir=tfds_data_dir)
  builder.download_and_prepare()
  splits = builder.info.splits
  return {split: splits[split].num_examples for split in image_text.SPLITS if split in splits}


def write_marker(path: str, contents: dict, *, sample_rate: int,
                 classes: Sequence[str] | None) -> None:
  """The marker of an audio dataset directory: the last file of a build."""
  image_text.write_marker(path, {
      "modality": MODALITY, "audio_version": AUDIO_VERSION, "sample_rate": int(sample_rate),
      "classes": None if classes is None else list(classes), **contents})


# ----------------------------------------------------------------- reading


def prepare_command(data_dir: str, name: str, source_format: str | None = None,
                    overwrite: bool = False) -> str:
  """The command line that (re)builds audio dataset `name`, for error messages."""
  return image_text.prepare_command(data_dir, name, source_format, overwrite=overwrite,
                                    formats=FORMATS, files_flag="--audio",
                                    extra=" --sample-rate HZ")


def is_audio(marker: dict | None) -> bool:
  return bool(marker) and marker.get("modality") == MODALITY


def check_dataset(data_dir: str, name: str) -> dict:
  """The marker of a complete audio dataset of this version, or raises.

  FileNotFoundError naming the prepare command when nothing is there;
  ValueError for an incomplete directory, another format version, or an
  image-text dataset under that name.
  """
  path = image_text.dataset_dir(data_dir, name)
  if not os.path.isdir(path) and not str(data_dir).startswith(("gs://", "s3://")):
    raise FileNotFoundError(
        f"no prepared dataset {name!r} in {data_dir} ({path} does not exist). Prepare "
        f"it with: {prepare_command(data_dir, name)}")
  marker = image_text.check_dataset(data_dir, name)
  if not is_audio(marker):
    raise ValueError(f"{path} holds images, not audio; point config.data.name at an audio "
                     f"dataset, prepared with: {prepare_command(data_dir, name)}")
  if marker.get("audio_version") != AUDIO_VERSION:
    raise ValueError(
        f"{path} holds audio in version {marker.get('audio_version')}, but this mmjax "
        f"reads version {AUDIO_VERSION}. Re-run prepare with --overwrite: "
        f"{prepare_command(data_dir, name, (marker.get('settings') or {}).get('format'), True)}")
  return marker


class AudioTextSource(image_text.ImageTextSource):
  """Random access to one split: `len(src)`, `src[i]` -> {"audio", "captions",
  "audio_id", "label"}, the clip still encoded (decode_clip).

  Wraps tfds's ArrayRecord data source as ImageTextSource does; picklable, so
  grain workers can hold it.
  """

  def __init__(self, tfds_source, name: str, split: str, sample_rate: int,
               classes: Sequence[str] | None):
    super().__init__(tfds_source, name, split)
    self.sample_rate = sample_rate
    self.classes = None if classes is None else tuple(classes)

  def __repr__(self) -> str:
    return (f"AudioTextSource({self.name}/{self.split}, {len(self)} examples, "
            f"{self.sample_rate} Hz)")

  @staticmethod
  def _to_python(example: dict) -> dict:
    return {"audio": bytes(example["audio"]),
            "captions": [c.decode("utf-8") for c in example["captions"]],
            "audio_id": example["audio_id"].decode("utf-8"),
            "label": int(example["label"])}


def open_split(data_dir: str, name: str, split: str) -> AudioTextSource:
  """Opens `split` ("train", "val" or "test") of audio dataset `name`."""
  if split not in image_text.SPLITS:
    raise ValueError(f"split {split!r} is not one of {image_text.SPLITS}.")
  marker = check_dataset(data_dir, name)
  builder = tfds.builder_from_directory(
      os.path.join(image_text.dataset_dir(data_dir, name), image_text.TFDS_VERSION))
  return AudioTextSource(builder.as_data_source(split=split), name, split,
                         marker["sample_rate"], marker.get("classes"))


def train_captions(data_dir: str, name: str, limit: int | None = None) -> Iterator[str]:
  """The train split's captions, for training a tokenizer; `limit` clips at
  most, evenly spaced over the split."""
  source = open_split(data_dir, name, "train")
  n = len(source)
  indices = (range(n) if limit is None or limit >= n
             else np.linspace(0, n - 1, num=max(limit, 0)).round().astype(int))
  for i in indices:
    yield from source[i]["captions"]
