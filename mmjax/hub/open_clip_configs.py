"""open_clip's model configs, as facts: the architectures mmjax.hub.open_clip
reads without open_clip installed.

CONFIGS maps an open_clip model name to its config in open_clip's JSON layout
(embed_dim, vision_cfg, text_cfg, ...), for the common released models; other
names are read from an installed open_clip package or a given config file.
TIMM_TRUNKS gives the sizes and MLP activation of the timm ViT trunks the
*-SigLIP* configs name (timm fixes these in code, not in the config).
"""

def _clip(embed_dim, image_size, patch, width, layers, text_width, text_heads, text_layers,
          head_width=64, mlp_ratio=4.0):
  """An open_clip CLIP config (model_configs/<name>.json layout)."""
  vision = {"image_size": image_size, "layers": layers, "width": width,
            "head_width": head_width, "mlp_ratio": mlp_ratio, "patch_size": patch}
  text = {"context_length": 77, "vocab_size": 49408, "width": text_width,
          "heads": text_heads, "layers": text_layers}
  return {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text}


def _siglip(embed_dim, trunk, width, heads, layers, mlp_ratio=4.0, vocab=32000, context=64,
            tanh=False, proj=True):
  """An open_clip *-SigLIP* config: a timm trunk and open_clip's text tower."""
  vision = {"image_size": int(trunk.rsplit("_", 1)[1]), "timm_model_name": trunk,
            "timm_pool": "map", "timm_proj": "none"}
  text = {"context_length": context, "vocab_size": vocab, "width": width, "heads": heads,
          "layers": layers, "mlp_ratio": mlp_ratio, "no_causal_mask": True,
          "pool_type": "last", "norm_kwargs": {"eps": 1e-6}}
  text.update({"proj_bias": True} if proj else {"proj_type": "none"})
  if tanh:
    text["act_kwargs"] = {"approximate": "tanh"}
  return {"embed_dim": embed_dim, "init_logit_bias": -10, "custom_text": True,
          "vision_cfg": vision, "text_cfg": text}


_SO400M = (16, 27, 3.7362)  # heads, layers, mlp_ratio of the So400m text towers
CONFIGS = {
    "ViT-B-32": _clip(512, 224, 32, 768, 12, 512, 8, 12),
    "ViT-B-16": _clip(512, 224, 16, 768, 12, 512, 8, 12),
    "ViT-L-14": _clip(768, 224, 14, 1024, 24, 768, 12, 12),
    "ViT-L-14-336": _clip(768, 336, 14, 1024, 24, 768, 12, 12),
    "ViT-H-14": _clip(1024, 224, 14, 1280, 32, 1024, 16, 24, head_width=80),
    "ViT-g-14": _clip(1024, 224, 14, 1408, 40, 1024, 16, 24, head_width=88, mlp_ratio=4.3637),
    "ViT-bigG-14": _clip(1280, 224, 14, 1664, 48, 1280, 20, 32, head_width=104,
                         mlp_ratio=4.9231),
    **{f"ViT-B-16-SigLIP{s}": _siglip(768, f"vit_base_patch16_siglip_{n}", 768, 12, 12)
       for s, n in (("", 224), ("-256", 256), ("-384", 384), ("-512", 512))},
    "ViT-B-16-SigLIP-i18n-256": _siglip(768, "vit_base_patch16_siglip_256", 768, 12, 12,
                                        vocab=250000),
    **{f"ViT-L-16-SigLIP-{n}": _siglip(1024, f"vit_large_patch16_siglip_{n}", 1024, 16, 24)
       for n in (256, 384)},
    "ViT-SO400M-14-SigLIP": _siglip(1152, "vit_so400m_patch14_siglip_224", 1152, *_SO400M,
                                    context=16),
    **{f"ViT-SO400M-14-SigLIP-{n}": _siglip(1152, f"vit_so400m_patch14_siglip_{n}", 1152,
                                            *_SO400M) for n in (378, 384)},
    "ViT-SO400M-16-SigLIP-i18n-256": _siglip(1152, "vit_so400m_patch16_siglip_256", 1152,
                                             *_SO400M, vocab=250000, proj=False),
    # SigLIP 2: the Gemma vocabulary and a tanh-GELU text tower.
    **{f"ViT-B-16-SigLIP2{s}": _siglip(768, f"vit_base_patch16_siglip_{n}", 768, 12, 12,
                                       vocab=256000, tanh=True)
       for s, n in (("", 224), ("-256", 256), ("-384", 384), ("-512", 512))},
    "ViT-B-32-SigLIP2-256": _siglip(768, "vit_base_patch32_siglip_256", 768, 12, 12,
                                    vocab=256000, tanh=True),
    **{f"ViT-L-16-SigLIP2-{n}": _siglip(1024, f"vit_large_patch16_siglip_{n}", 1024, 16, 24,
                                        vocab=256000, tanh=True) for n in (256, 384, 512)},
    **{f"ViT-SO400M-14-SigLIP2{s}": _siglip(1152, f"vit_so400m_patch14_siglip_{n}", 1152,
                                            *_SO400M, vocab=256000, tanh=True)
       for s, n in (("", 224), ("-378", 378))},
    **{f"ViT-SO400M-16-SigLIP2-{n}": _siglip(1152, f"vit_so400m_patch16_siglip_{n}", 1152,
                                             *_SO400M, vocab=256000, tanh=True)
       for n in (256, 384, 512)},
    **{f"ViT-gopt-16-SigLIP2-{n}": _siglip(1536, f"vit_giantopt_patch16_siglip_{n}", 1152,
                                           *_SO400M, vocab=256000, tanh=True)
       for n in (256, 384)},
}
# The -quickgelu forms: the same sizes, QuickGELU (what OpenAI's weights need).
CONFIGS.update({f"{name}-quickgelu": {**CONFIGS[name], "quick_gelu": True} for name in (
    "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14")})


def _trunk(patch, width, depth, heads, mlp_ratio=4.0, act="gelu"):
  return {"patch_size": patch, "width": width, "depth": depth, "num_heads": heads,
          "mlp_ratio": mlp_ratio, "act": act}


# timm's SigLIP trunks (timm/models/vision_transformer.py): sizes and MLP
# activation. timm's default is exact GELU; some were registered with
# act_layer='gelu_tanh'. All: no class token, 'map' pooling, LayerNorm eps 1e-6.
TIMM_TRUNKS = {
    **{f"vit_base_patch16_siglip_{n}": _trunk(16, 768, 12, 12) for n in (224, 256, 384, 512)},
    "vit_base_patch32_siglip_256": _trunk(32, 768, 12, 12, act="gelu_tanh"),
    **{f"vit_large_patch16_siglip_{n}": _trunk(16, 1024, 24, 16) for n in (256, 384)},
    "vit_large_patch16_siglip_512": _trunk(16, 1024, 24, 16, act="gelu_tanh"),
    **{f"vit_so400m_patch14_siglip_{n}": _trunk(14, 1152, 27, 16, 3.7362)
       for n in (224, 378, 384)},
    **{f"vit_so400m_patch16_siglip_{n}": _trunk(16, 1152, 27, 16, 3.7362, act="gelu_tanh")
       for n in (256, 384, 512)},
    **{f"vit_giantopt_patch16_siglip_{n}": _trunk(16, 1536, 40, 16, act="gelu_tanh")
       for n in (256, 384)},
}
# A timm trunk not in TIMM_TRUNKS can be described in the config itself:
# vision_cfg[TRUNK_KEY] = _trunk's fields (an mmjax key; open_clip never sees it).
TRUNK_KEY = "mmjax_timm_trunk"
