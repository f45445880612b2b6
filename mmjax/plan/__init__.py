"""Ahead-of-time plans of an experiment on a TPU slice: `python -m mmjax.plan`."""
