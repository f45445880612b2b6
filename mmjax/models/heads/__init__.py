"""Heads: modules that read the towers' outputs (see mmjax.models.registry.HEADS)."""
