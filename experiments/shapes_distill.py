"""Distillation on shapes: a small student learns from a frozen, larger SigLIP teacher.

The teacher is the default experiment trained to completion. The figures
below used the default of their time: towers of width 256 (ViT depth 4, text
depth 2, 128-d embeddings, 5.0M params) at lr 1e-3; today's default is the
same at width 128 (1.5M params, lr 2e-3, image tokens flattened), so a rerun
distils from a smaller teacher. The student
is 0.68M params (widths 128, image depth 2, text depth 1, 64-d embeddings) and
trains with SigLIP's sigmoid loss plus, depending on the arm:

  none    nothing else: the baseline at the same step budget
  kl      + kl_alignment: KL(teacher || student) of the row- and column-wise
          softmaxes of both similarity matrices, at distill.temperature
  kl_mse  + mse_to_teacher as well: the student's embeddings, mapped by a learned
          [64, 128] projection (distill.projection_dim), pulled onto the teacher's

  python -m mmjax.train --config experiments/shapes_siglip.py --workdir runs/siglip
  python -m mmjax.train --config experiments/shapes_distill.py:none --workdir runs/distill_none
  python -m mmjax.train --config experiments/shapes_distill.py:kl --workdir runs/distill_kl \\
      --config.distill.teacher=runs/siglip
  python -m mmjax.train --config experiments/shapes_distill.py:kl_mse \\
      --workdir runs/distill_kl_mse --config.distill.teacher=runs/siglip

The arms differ only in loss.terms and the distill block; every other key
(seed, steps, batch, model, optimizer) is the same. Training an arm with a
teacher stops before compiling if --config.distill.teacher is not given.
Evaluate like any run, with the same --config (the teacher is not read, so it
need not be named or exist):

  python -m mmjax.evaluate --config experiments/shapes_distill.py:kl --workdir runs/distill_kl

Measured on a 2-core CPU: 1,000 steps at batch 128 for every arm (the full
default budget), teacher = a finished default run (runs/default, the
shapes_siglip config: R@1 i2t 0.757, t2i 0.756), retrieval on the 1,000 x 5
test split; --config.seed=S for seeds 1 and 2 (workdirs runs/distill_ARM_sS):

  arm      seed   i2t R@1  t2i R@1
  none       0     0.657    0.614
  none       1     0.557    0.565
  none       2     0.648    0.635
  kl         0     0.649    0.638
  kl         1     0.583    0.570
  kl         2     0.676    0.654
  kl_mse     0     0.552    0.513

  mean of 3 seeds: none 0.621 / 0.605, kl 0.636 / 0.621 (paired gain
  +1.5 / +1.6 points; i2t -0.8, +2.6, +2.8 and t2i +2.4, +0.5, +1.9 per seed).

The seed alone moves R@1 by up to 10 points at this budget, so compare arms
over seeds. KL distillation helps a little in 5 of 6 paired comparisons; the
embedding MSE at weight 1 (one seed, no other weight tried) is clearly worse,
10 points below its baseline seed (it led at step 200, then fell behind).
"""

import ml_collections

from mmjax import configs

ARMS = ("none", "kl", "kl_mse")


def get_config(arm: str = "kl"):
  if arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}: write --config "
                     f"experiments/shapes_distill.py:ARM with ARM one of {ARMS}.")
  config = configs.base()
  config.loss.name = "sigmoid_contrastive"
  config.model.temperature_init = 10.0   # SigLIP: t' = log 10, b = -10
  config.model.bias_init = -10.0
  config.model.towers.image = ml_collections.ConfigDict(dict(
      kind="vit", patch_size=8, width=128, depth=2, num_heads=4, pool="gap", stem="conv"))
  config.model.towers.text = ml_collections.ConfigDict(dict(
      kind="transformer", width=128, depth=1, num_heads=4, causal=True, pool="eos"))
  config.model.embed_dim = 64
  if arm != "none":
    # A placeholder rather than "": the teacher must be named on the command line.
    config.distill.teacher = ml_collections.config_dict.placeholder(str)
    config.distill.temperature = 0.1
    config.loss.terms.kl_alignment = 1.0
  if arm == "kl_mse":
    config.distill.projection_dim = 128  # the teacher's model.embed_dim
    config.loss.terms.mse_to_teacher = 1.0
  return config
