"""SigLIP at pod scale, for `python -m mmjax.plan` (and for training on a pod).

  python -m mmjax.plan --config experiments/pod_siglip.py:b16 --topology v5e-256
  python -m mmjax.plan --config experiments/pod_siglip.py:so400m --topology v5p-128
  python -m mmjax.plan --config experiments/pod_siglip.py:l16 --topology v6e-256

The SigLIP paper's towers at a global batch of 32,768: ViT-B/16 + text-B,
So400m/14 + text-So400m, ViT-L/16 + text-L; 224 px, MAP head, 64 tokens, a
32k vocabulary, bfloat16, rematerialised blocks, the ring sigmoid loss (the
"auto" form on a sharded batch). B/16 is data parallel (params replicated,
as big_vision runs it); L/16 shards params and optimizer state over all chips
(mesh.fsdp = -1), So400m over 64 (its width, 1152, does not split 128 or 256
ways). `small` has the same layout with tiny towers: it
compiles in seconds, for tests. The data is a prepared image-text dataset
(`python -m mmjax.data.prepare`); a plan reads none of it.
"""

from mmjax import configs

TOWERS = {
    # name: (image tower, text tower, embed_dim)
    "b16": (dict(patch_size=16, width=768, depth=12, num_heads=12),
            dict(width=768, depth=12, num_heads=12), 768),
    "so400m": (dict(patch_size=14, width=1152, depth=27, num_heads=16, mlp_dim=4304),
               dict(width=1152, depth=27, num_heads=16, mlp_dim=4304), 1152),
    "l16": (dict(patch_size=16, width=1024, depth=24, num_heads=16),
            dict(width=1024, depth=24, num_heads=16), 1024),
    "small": (dict(patch_size=16, width=64, depth=2, num_heads=2),
              dict(width=64, depth=2, num_heads=2), 64),
}


def get_config(arg: str = "b16"):
  if arg not in TOWERS:
    raise ValueError(f"experiments/pod_siglip.py:{arg}: choose one of {sorted(TOWERS)}.")
  image, text, embed_dim = TOWERS[arg]
  config = configs.vit_b16_on_prepared_data("webli_like")
  config.data.data_dir = "/data/tfds"
  config.data.context_length = 64
  config.data.vocab_size = 32000
  config.model.towers.image = dict(kind="vit", pool="map", stem="patch", **image)
  config.model.towers.text = dict(kind="transformer", causal=False, pool="first", **text)
  config.model.embed_dim = embed_dim
  config.loss.name = "sigmoid_contrastive"
  config.model.temperature_init = 10.0
  config.model.bias_init = -10.0
  config.batch_size = 32768
  config.optim.lr = 1e-3
  config.optim.weight_decay = 1e-4
  config.eval.batch_size = 1024
  if arg == "l16":
    config.mesh.data = 1
    config.mesh.fsdp = -1
  elif arg == "so400m":
    # Width 1152 = 2^7 x 9: over 256 chips of fsdp no parameter splits and every
    # one is replicated (the plan lists them); 64 divides it on every slice.
    config.mesh.data = -1
    config.mesh.fsdp = 64
  return config
