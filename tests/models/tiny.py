"""A tiny image-text MultiTower with the heads a test gives it: the towers of
the head tests (caption decoders, ITM heads, likelihood scoring)."""

from flax.core import FrozenDict

from mmjax.models import multi_tower


def multi_tower_with(heads, vocab_size: int, length: int, width: int = 16, patch: int = 8,
                     embed_dim: int = 8) -> multi_tower.MultiTower:
  """ViT (one block, `patch`-pixel patches) and text transformer (one block)
  of `width`, plus `heads` ({name: spec})."""
  towers = FrozenDict(
      image=FrozenDict(kind="vit", patch_size=patch, width=width, depth=1, num_heads=2,
                       pool="gap", stem="patch"),
      text=FrozenDict(kind="transformer", vocab_size=vocab_size, context_length=length,
                      width=width, depth=1, num_heads=2))
  return multi_tower.MultiTower(towers=towers, heads=FrozenDict(heads), embed_dim=embed_dim)
