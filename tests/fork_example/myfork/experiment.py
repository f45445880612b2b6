"""The fork's experiment: image, text and sketch towers on the shapes data,
with its own tower, loss and evaluator named by dotted path."""

from mmjax import configs


def get_config():
  c = configs.base()
  c.data.fields = ("sketch", "scene_id")
  c.data.image_size = 16
  c.data.context_length = 24
  c.batch_size = 16
  c.total_steps = 30
  c.log_every = 5
  c.eval_every = 30
  c.checkpoint_every = 30
  c.optim.warmup_steps = 5
  c.model.embed_dim = 16
  c.model.towers.image = dict(kind="vit", patch_size=8, width=16, depth=1, num_heads=2,
                              pool="gap")
  c.model.towers.text = dict(kind="transformer", width=16, depth=1, num_heads=2,
                             causal=True, pool="eos")
  c.model.towers.sketch = dict(kind="myfork.towers.EdgeMLP", input="sketch", width=16)
  c.loss.name = "sigmoid_contrastive"
  c.loss.terms.scene = dict(fn="myfork.losses.same_scene_sigmoid", pair=("sketch", "text"))
  c.eval.num_images = 50
  c.eval.batch_size = 50
  c.eval.reports = False
  c.eval.evaluators.sketch_text = dict(kind="retrieval", every=0, pair=("sketch", "text"))
  c.eval.evaluators.cosine = dict(kind="myfork.evaluators.PairedCosine", every=0,
                                  pair=("image", "sketch"))
  return c
