"""CLAP-style audio-text alignment on AudioCaps: train, evaluate audio <-> text retrieval.

  python -m mmjax.data.prepare audiocaps --source audiocaps/dataset \\
      --audio /data/audiocaps/audio --data-dir /data/tfds --sample-rate 16000
  python -m mmjax.train --config experiments/audiocaps_clap.py \\
      --config.data.data_dir=/data/tfds --workdir runs/audiocaps_clap
  # then zero-shot classification of ESC-50 with the trained towers:
  python -m mmjax.evaluate --config experiments/esc50_zeroshot.py:runs/audiocaps_clap \\
      --workdir runs/audiocaps_clap

From scratch on AudioCaps's train clips (about 46k downloadable, one caption
each; val and test have five). An audio spectrogram transformer reads 128-band
log-mel computed on the device from the raw 16 kHz waveform with AST's framing
(25 ms windows every 10 ms, uncentred, HTK mels to 8 kHz: audio_presets.AST,
in a 512-point FFT); its 992-frame window is the training clip, 9.942 s, so a
10 s clip gives one window of 62 x 8 patches of 16 x 16 and loses 58 ms (a
random 58 ms in training, its end in evaluation). Shorter clips are repeated to length
(CLAP's "repeatpad"). The text side is a 6-layer transformer on a 4k
sentencepiece vocabulary trained on the captions. CLAP's softmax contrastive
loss (temperature 1/0.07), global batch 256, AdamW with 5% warmup and cosine
decay, bfloat16, rematerialised blocks: about 55 epochs, sized for one
accelerator. Retrieval audio <-> text on the whole test split (975 clips x 5
captions) every 1,000 steps writes audio_to_text_R@1/5/10 and
text_to_audio_R@1/5/10.
"""

import ml_collections

from mmjax import configs
from mmjax.data import audio_presets

SAMPLE_RATE = audio_presets.AST["sample_rate"]
# AST's 25 ms windows in Kaldi's 512-point FFT, so that all but one of the 128
# mel bands catch an FFT bin (see audio_presets.AST).
FRONT_END = {**audio_presets.AST, "n_fft": 512, "win_length": 400}
FEATURES = dict(fn="mmjax.data.audio.log_mel", **FRONT_END)
FRAMES = 992  # 62 patches of 16 frames
# The waveform whose uncentred frames number exactly FRAMES (no second window).
CLIP_SECONDS = (FRONT_END["n_fft"] + (FRAMES - 1) * FRONT_END["hop_length"]) / SAMPLE_RATE


def get_config():
  config = configs.base()
  config.data.name = "audiocaps"
  config.data.sample_rate = SAMPLE_RATE
  config.data.clip_seconds = CLIP_SECONDS
  config.data.eval_clip_seconds = CLIP_SECONDS
  config.data.pad_mode = "repeat"
  config.data.context_length = 48
  config.data.vocab_size = 4096
  config.data.num_workers = 4
  config.model.towers = ml_collections.ConfigDict(dict(
      audio=dict(kind="ast", input="audio", features=FEATURES, frames=FRAMES, patch=(16, 16),
                 width=384, depth=12, num_heads=6, pool="gap"),
      text=dict(kind="transformer", width=384, depth=6, num_heads=6, causal=True,
                pool="eos")))
  config.model.embed_dim = 512
  config.model.remat = True
  config.dtype = "bfloat16"
  config.loss.name = "softmax_contrastive"
  config.loss.pair = ("audio", "text")
  config.model.temperature_init = 1 / 0.07
  config.model.bias_init = None
  config.batch_size = 256
  config.total_steps = 10_000
  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.optim.lr = 5e-4
  config.optim.warmup_steps = 500
  config.optim.weight_decay = 0.05
  config.eval.evaluators.retrieval = dict(kind="retrieval", every=0, pair=("audio", "text"))
  config.eval.num_images = -1  # every test clip
  config.eval.batch_size = 128
  return config
