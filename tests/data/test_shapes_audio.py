"""The shapes scenes' sounds: pure functions of the scene that carry its attributes."""

import numpy as np
import pytest

from mmjax.data import shapes, shapes_audio, shapes_views

SR = shapes_audio.SAMPLE_RATE


def _obj(colour="red", shape="circle", size="large", x=0.3, y=0.5):
  return shapes.Obj(colour, shape, size, x, y, shapes.SIZES[size])


def _peak_hz(wave, lo=0, hi=None):
  """The strongest frequency of wave[lo:hi] (Hann window, zero-padded for a fine grid)."""
  x = wave[lo:hi]
  spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * SR))
  return np.argmax(spec) * SR / (8 * SR)


def _semitones(f, g):
  return abs(12 * np.log2(f / g))


def test_a_sound_is_a_pure_function_of_the_scene():
  b = shapes.train_batch(0, 3, 6, with_scenes=True)
  first = shapes_views.FIELDS["audio"](b["image"], b["scenes"])
  again = shapes_audio.sounds(list(b["scenes"]))
  assert first.shape == (6, shapes_audio.CLIP_SAMPLES) and first.dtype == np.float32
  np.testing.assert_array_equal(first, again)
  # Different scenes (even of equal attributes: positions differ) sound different.
  assert not np.array_equal(first[0], first[1])
  assert shapes_views.field_spec("audio", 32) == ((shapes_audio.CLIP_SAMPLES,),
                                                  np.dtype(np.float32))


@pytest.mark.parametrize("colour", list(shapes.COLOURS))
def test_colour_sets_the_pitch(colour):
  scene = shapes.Scene((_obj(colour=colour),), cell=(1, 0))
  f = _peak_hz(shapes_audio.synthesize(scene))
  # Within the third of a semitone of jitter (and the analysis grid's 0.125 Hz).
  assert _semitones(f, shapes_audio.PITCHES[colour]) < 0.34 + 0.01
  others = [p for c, p in shapes_audio.PITCHES.items() if c != colour]
  assert min(_semitones(f, p) for p in others) > 2.6  # never mistaken for a neighbour


def test_size_sets_the_loudness():
  def rms(size):
    return np.sqrt(np.mean(shapes_audio.synthesize(
        shapes.Scene((_obj(size=size),), cell=(1, 1))) ** 2))
  db = 20 * np.log10(rms("large") / rms("small"))
  assert 7 < db < 13  # 10 dB apart, +- the 1.5 dB jitter of each


def test_shapes_differ_in_timbre():
  """Harmonic content: a hum is one sine; a buzz has odd harmonics only."""
  def harmonic_energy(shape, k):
    wave = shapes_audio.synthesize(shapes.Scene((_obj(shape=shape),), cell=(1, 1)))
    f0 = _peak_hz(wave)
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), n=8 * SR))
    return spec[int(round(k * f0 * 8))] / spec.max()
  assert harmonic_energy("circle", 3) < 0.01
  assert harmonic_energy("square", 3) > 0.1
  assert harmonic_energy("square", 2) < 0.01
  assert harmonic_energy("triangle", 2) > 0.1


def test_side_by_side_sounds_left_first_whichever_way_it_is_described():
  low, high = _obj("red", x=0.25), _obj("cyan", x=0.75)
  left_first = shapes.Scene((low, high), relation="left")
  right_first = shapes.Scene((high, low), relation="right")  # the same layout
  half = SR // 2
  for scene in (left_first, right_first):
    wave = shapes_audio.synthesize(scene)
    assert _semitones(_peak_hz(wave, 0, half), shapes_audio.PITCHES["red"]) < 0.5
    assert _semitones(_peak_hz(wave, half), shapes_audio.PITCHES["cyan"]) < 0.5


def test_stacked_objects_overlap_upper_first():
  upper, lower = _obj("cyan", y=0.25), _obj("red", y=0.75)
  wave = shapes_audio.synthesize(shapes.Scene((lower, upper), relation="below"))
  early = slice(int(0.1 * SR), int(0.25 * SR))  # only the upper one sounds yet
  assert _semitones(_peak_hz(wave[early]), shapes_audio.PITCHES["cyan"]) < 0.5
  both = wave[int(0.4 * SR):int(0.8 * SR)]
  spec = np.abs(np.fft.rfft(both * np.hanning(len(both)), n=8 * SR))
  for colour in ("cyan", "red"):  # both present at once, within the pitch jitter
    f = shapes_audio.PITCHES[colour]
    near = spec[int(f * 2 ** (-0.4 / 12) * 8):int(f * 2 ** (0.4 / 12) * 8)]
    assert near.max() > 0.1 * spec.max(), colour


def test_loudest_scene_stays_below_full_scale():
  scene = shapes.Scene((_obj("cyan", "square", y=0.2), _obj("red", "square", y=0.8)),
                       relation="above")
  assert np.abs(shapes_audio.synthesize(scene)).max() < 1.0


def test_sound_captions_say_what_is_heard():
  a, b = _obj("red", "circle", "large", x=0.2), _obj("cyan", "diamond", "small", x=0.8)
  assert (shapes_audio.sound_caption(shapes.Scene((b, a), relation="right"))
          == "a loud deep hum followed by a soft piercing chime")
  assert (shapes_audio.sound_caption(shapes.Scene((a, b), relation="above"))
          == "a loud deep hum joined by a soft piercing chime")
  assert (shapes_audio.sound_caption(shapes.Scene((b,), cell=(2, 0)))
          == "a long soft piercing chime starting early")
