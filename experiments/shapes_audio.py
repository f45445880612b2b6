"""Three modalities on the shapes data: the image, its caption, and its sound.

Every scene has a synthesised sound (mmjax/data/shapes_audio.py): colour sets
the pitch, shape the timbre, size the loudness and the relation the timing. An
audio spectrogram transformer reads log-mel features computed on the device
from the raw waveform (the tower's `features` entry).

Alignment is anchored on text, as ImageBind anchors on images: sigmoid terms
align image-text and audio-text, and no term ever sees an (audio, image) pair.
Retrieval is reported for every pair; audio <-> image is the emergent one.
At the end: zero-shot classification of the sounds from text prompts, and
fusion heads that classify a scene's colour and shape from all three
modalities at once, beside each modality alone.

  python -m mmjax.train --config experiments/shapes_audio.py --workdir runs/audio
"""

from mmjax import configs

SAMPLE_RATE = 16_000  # mmjax.data.shapes_audio.SAMPLE_RATE
# AST's framing (25 ms windows every 10 ms, uncentred, HTK mels up to 8 kHz)
# with 64 mel bands: a 1 s clip gives 98 frames, 7 x 4 patches of 14 x 16.
FEATURES = dict(fn="mmjax.data.audio.log_mel", sample_rate=SAMPLE_RATE, n_fft=400,
                hop_length=160, n_mels=64, fmin=20.0, fmax=8000.0, htk=True, norm=None,
                center=False)
PAIRS = (("image", "text"), ("audio", "text"))


def get_config():
  config = configs.base()
  config.data.fields = ("audio",)
  config.model.towers.audio = dict(kind="ast", input="audio", features=FEATURES, frames=98,
                                   patch=(14, 16), width=128, depth=2, num_heads=4)
  config.model.pair_scales = PAIRS
  config.loss.name = "sigmoid_contrastive"   # over loss.pair = (image, text)
  config.loss.terms.audio_text = dict(fn="sigmoid_contrastive", pair=("audio", "text"))
  config.model.temperature_init = 10.0
  config.model.bias_init = -10.0
  evaluators = config.eval.evaluators
  evaluators.retrieval_audio_text = dict(kind="retrieval", every=0, pair=("audio", "text"))
  # Never trained: audio and image meet only through text.
  evaluators.retrieval_audio_image = dict(kind="retrieval", every=0, pair=("audio", "image"))
  evaluators.zeroshot_audio = dict(kind="zeroshot", every=-1, modality="audio")
  # Classification heads over the frozen towers' image, text and audio
  # features together, against each modality alone (mmjax/data/shapes_fusion.py).
  evaluators.fusion.every = -1
  evaluators.fusion.task = ("colour", "shape")
  return config
