"""Tests for mmjax/data/audio_io.py: decoding any file to mono float32 at one
rate, what is fatal and what is fixed, and fitting clips to a length."""

import io

import numpy as np
import pytest
import soundfile

from mmjax.data import audio_io

RATE = 16_000


def sine(freq=1000.0, seconds=1.0, rate=RATE, amplitude=0.5):
  t = np.arange(round(seconds * rate)) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(wave, rate=RATE, fmt="WAV", subtype="PCM_16") -> bytes:
  buf = io.BytesIO()
  soundfile.write(buf, wave, rate, format=fmt, subtype=subtype)
  return buf.getvalue()


def peak_frequency(wave, rate):
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return np.argmax(spectrum) * rate / len(wave)


def test_16bit_wav_at_the_rate_is_taken_as_it_is():
  wave = sine()
  data = encode(wave)
  clip = audio_io.decode(data, RATE)
  assert clip.changes == () and clip.wave.dtype == np.float32 and clip.wave.shape == (RATE,)
  # 16-bit PCM read as k / 32768: exactly the stored integers.
  pcm = soundfile.read(io.BytesIO(data), dtype="int16")[0]
  np.testing.assert_array_equal(clip.wave * 32768, pcm)
  np.testing.assert_allclose(clip.wave, wave, atol=1 / 32768)
  assert (clip.source_rate, clip.channels, clip.subtype) == (RATE, 1, "PCM_16")


@pytest.mark.parametrize("source_rate", [22_050, 44_100, 8_000])
def test_other_rates_are_resampled_keeping_pitch_and_level(source_rate):
  clip = audio_io.decode(encode(sine(1000.0, 1.0, source_rate), source_rate), RATE)
  assert clip.changes == ("resampled",) and clip.source_rate == source_rate
  assert clip.wave.shape == (RATE,)  # one second at the new rate
  assert abs(peak_frequency(clip.wave, RATE) - 1000.0) <= 1.0
  middle = clip.wave[RATE // 4:3 * RATE // 4]  # away from the filter's edges
  assert abs(np.abs(middle).max() - 0.5) < 0.01


def test_stereo_is_downmixed_to_the_channel_mean():
  left, right = sine(440.0), sine(1200.0, amplitude=0.3)
  clip = audio_io.decode(encode(np.stack([left, right], axis=1)), RATE)
  assert clip.changes == ("downmixed",) and clip.channels == 2
  stored = soundfile.read(io.BytesIO(encode(np.stack([left, right], axis=1))),
                          dtype="float32")[0]
  np.testing.assert_allclose(clip.wave, stored.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("subtype,reason,atol", [
    ("PCM_U8", "converted_pcm_u8", 1 / 128),
    ("PCM_24", "converted_pcm_24", 1e-6),
    ("PCM_32", "converted_pcm_32", 1e-7),
    ("FLOAT", "converted_float", 0.0),
])
def test_other_sample_formats_are_converted(subtype, reason, atol):
  wave = sine(700.0)
  clip = audio_io.decode(encode(wave, subtype=subtype), RATE)
  assert clip.changes == (reason,) and clip.subtype == subtype
  np.testing.assert_allclose(clip.wave, wave, atol=atol + 1e-7)


def test_float_beyond_full_scale_is_clipped():
  wave = sine(amplitude=1.5)
  clip = audio_io.decode(encode(wave, subtype="FLOAT"), RATE)
  assert clip.changes == ("converted_float", "clipped")
  np.testing.assert_array_equal(clip.wave, np.clip(wave, -1, 1))


def test_over_long_clip_keeps_its_start():
  wave = sine(seconds=3.0)
  clip = audio_io.decode(encode(wave, subtype="FLOAT"), RATE, max_seconds=2.0)
  assert "cropped" in clip.changes and clip.wave.shape == (2 * RATE,)
  np.testing.assert_array_equal(clip.wave, wave[:2 * RATE])
  # Cropped and resampled: the crop is at the new rate.
  clip = audio_io.decode(encode(sine(seconds=3.0, rate=22_050), 22_050), RATE, max_seconds=2.0)
  assert set(clip.changes) == {"cropped", "resampled"} and clip.wave.shape == (2 * RATE,)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"),
                                         ("FLAC", "PCM_16")])
def test_truncated_files_are_fatal(fmt, subtype):
  data = encode(sine(seconds=2.0), fmt=fmt, subtype=subtype)
  with pytest.raises(audio_io.BadAudio, match="clip.wav") as error:
    audio_io.decode(data[:len(data) // 2], RATE, name="clip.wav")
  assert error.value.reason == "truncated_audio"
  # The whole file is fine.
  assert audio_io.decode(data, RATE).wave.shape == (2 * RATE,)


def test_a_wav_streamed_with_an_unknown_length_is_not_truncated():
  data = bytearray(encode(sine()))
  at = data.index(b"data")
  data[at + 4:at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
  clip = audio_io.decode(bytes(data), RATE)
  assert clip.wave.shape == (RATE,) and clip.changes == ()


@pytest.mark.parametrize("data", [b"", b"not audio at all " * 20,
                                  b"RIFF\x00\x00\x00\x00WAVE", b"\x89PNG\r\n\x1a\n" + bytes(64)])
def test_unreadable_bytes_are_fatal(data):
  with pytest.raises(audio_io.BadAudio) as error:
    audio_io.decode(data, RATE)
  assert error.value.reason == "unreadable_audio"


def test_silent_short_and_corrupt_clips_are_fatal():
  cases = [
      (np.zeros(RATE, np.float32), "silent_audio", {}),
      (sine(amplitude=1e-5), "silent_audio", {}),
      (sine(seconds=0.4), "too_short_audio", {"min_seconds": 0.5}),
      (np.zeros(0, np.float32), "too_short_audio", {}),
  ]
  for wave, reason, kwargs in cases:
    with pytest.raises(audio_io.BadAudio) as error:
      audio_io.decode(encode(wave, subtype="FLOAT"), RATE, **kwargs)
    assert error.value.reason == reason, (reason, str(error.value))
  nan = sine()
  nan[100] = np.nan
  with pytest.raises(audio_io.BadAudio) as error:
    audio_io.decode(encode(nan, subtype="FLOAT"), RATE)
  assert error.value.reason == "corrupt_audio"
  # Quiet is not silent: -60 dBFS is kept.
  assert audio_io.decode(encode(sine(amplitude=1e-3), subtype="FLOAT"), RATE).changes


def test_read_names_missing_and_unreadable_paths(tmp_path):
  with pytest.raises(audio_io.BadAudio) as error:
    audio_io.read(str(tmp_path / "nope.wav"), RATE)
  assert error.value.reason == "missing_audio" and "nope.wav" in str(error.value)
  with pytest.raises(audio_io.BadAudio) as error:
    audio_io.read(str(tmp_path), RATE)
  assert error.value.reason == "unreadable_audio"
  path = tmp_path / "ok.flac"
  path.write_bytes(encode(sine(), fmt="FLAC"))
  assert audio_io.read(str(path), RATE).wave.shape == (RATE,)


def test_fit_length():
  wave = np.arange(10, dtype=np.float32) + 1
  # Long: a window of n, drawn by the rng, reproducibly; without one, the start.
  crops = [audio_io.fit_length(wave, 4, rng=np.random.default_rng(s)) for s in range(20)]
  for crop in crops:
    assert crop.shape == (4,) and crop.dtype == np.float32
    np.testing.assert_array_equal(np.diff(crop), 1)
  assert len({c[0] for c in crops}) > 3  # starts vary
  np.testing.assert_array_equal(crops[3], audio_io.fit_length(wave, 4, rng=np.random.default_rng(3)))
  np.testing.assert_array_equal(audio_io.fit_length(wave, 4), wave[:4])
  # Short: repeated from the start, or padded with zeros after it.
  np.testing.assert_array_equal(audio_io.fit_length(wave[:3], 7, "repeat"),
                                [1, 2, 3, 1, 2, 3, 1])
  np.testing.assert_array_equal(audio_io.fit_length(wave[:3], 5, "pad"), [1, 2, 3, 0, 0])
  np.testing.assert_array_equal(audio_io.fit_length(wave, 10), wave)
  np.testing.assert_array_equal(audio_io.fit_length(wave[:0], 3), [0, 0, 0])
  with pytest.raises(ValueError, match="config.data.pad_mode"):
    audio_io.fit_length(wave, 4, "reflect")
