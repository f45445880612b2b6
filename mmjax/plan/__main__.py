"""python -m mmjax.plan --config FILE --topology NAME [--workdir DIR] [--search]

Compiles the experiment's train and evaluation steps for a TPU slice on this
machine (no TPU needed, no data read), prints memory per chip against HBM,
FLOPs, collectives, replicated parameters and a step-time estimate, and writes
DIR/plan.json (default: the current directory). Exits 0 whether or not the
plan fits: the verdict is `fits` in the file. --search compiles the mesh,
remat and accumulation choices for the config's global batch and keeps the
fastest that fits; --max_batch finds the largest global batch that fits.
"""

from absl import app, flags

from mmjax import cli, configs

_CONFIG = cli.define_config(configs.DEFAULT_EXPERIMENT,
                            "Experiment config file (a get_config() in experiments/).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:16x16 or v5e-256.")
_WORKDIR = flags.DEFINE_string("workdir", ".", "Where plan.json is written.")
_SEARCH = flags.DEFINE_boolean("search", False, "Search mesh / remat / grad_accum_steps.")
_MAX_BATCH = flags.DEFINE_boolean("max_batch", False,
                                  "Find the largest global batch that fits.")
_TOLERANCE = flags.DEFINE_float(
    "max_batch_tolerance", 1 / 16,
    "--max_batch stops once the largest fitting batch is known to this fraction.")
_EVAL = flags.DEFINE_boolean("eval", True, "Also compile the evaluation encoders.")
flags.mark_flag_as_required("topology")


def main(argv):
  cli.setup(argv)
  with cli.clean_errors():
    from mmjax.plan import planner, report, search, topology  # pylint: disable=g-import-not-at-top
    slice_ = topology.parse(_TOPOLOGY.value)
    devices = topology.devices(slice_)
    config = _CONFIG.value
    if _SEARCH.value:
      plan = search.best(config, slice_, devices, log=print)
    elif _MAX_BATCH.value:
      plan = search.largest_batch(config, slice_, devices, log=print,
                                  tolerance=_TOLERANCE.value)
    else:
      plan = planner.make(config, slice_, devices, with_eval=_EVAL.value)
    print(report.table(plan), flush=True)
    print(f"wrote {report.write(plan, _WORKDIR.value)}", flush=True)


if __name__ == "__main__":
  app.run(main)
