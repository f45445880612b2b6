"""Pod-scale plans of the multi-modality models: the B/16 SigLIP preset of
experiments/pod_siglip.py with a caption decoder, or with an audio tower.

  python -m mmjax.plan --config experiments/pod_multimodal.py:coca --topology v5e-256 --noeval
  python -m mmjax.plan --config experiments/pod_multimodal.py:audio --topology v5e-256 --noeval

`coca`: CoCa-Base as experiments/coco_coca.py builds it (a 6-block, 768-wide
caption decoder over 256 attention-pooled image tokens, the caption loss
weighted 2.0 against 1.0 for the sigmoid term) on the pod preset's towers,
batch and mesh. Every caption token is scored over the 32k vocabulary, so the
decoder's logits, not the towers, are the new memory at pod scale.

`audio`: CLAP at pod scale, experiments/audiocaps_clap.py's audio-text
alignment with B-sized towers: an AST-B/16 (width 768, depth 12, MAP head)
reading 9.94 s of 16 kHz audio as 128-band log-mel computed on the device
(AST's front end, one window of 992 frames) in place of the image tower, the
pod preset's text-B, sigmoid loss. Each example's waveform (159,152 float32
samples, 0.6 MiB) is a larger input than its image (0.15 MiB of uint8).

Both are data parallel (params replicated, as pod_siglip's b16), bfloat16 with
rematerialised blocks and the ring loss. A plan reads no data; to train,
prepare the image-text (coca) or AudioCaps (audio) dataset and set
--config.data.data_dir.
"""

from mmjax import experiment_files
from mmjax.losses import captioning


def get_config(arg: str = "coca"):
  config = experiment_files.config("pod_siglip", "b16")
  if arg == "coca":
    config.model.heads.caption = dict(kind="caption_decoder", width=768, depth=6,
                                      num_heads=12, num_queries=256, source="image")
    config.loss.terms.caption = captioning.term("caption", weight=2.0)
  elif arg == "audio":
    clap = experiment_files.config("audiocaps_clap")
    config.data.name = clap.data.name
    for key in ("sample_rate", "clip_seconds", "eval_clip_seconds", "pad_mode"):
      config.data[key] = clap.data[key]
    config.model.towers = dict(
        audio=dict(clap.model.towers.audio, width=768, depth=12, num_heads=12, pool="map"),
        text=config.model.towers.text)
    config.loss.pair = ("audio", "text")
    config.eval.evaluators = clap.eval.evaluators  # audio <-> text retrieval
  else:
    raise ValueError(f"experiments/pod_multimodal.py:{arg}: choose coca or audio.")
  return config
