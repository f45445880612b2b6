"""What the two entry points share: argument checks and readable failures."""

import contextlib
import sys

from absl import app, logging


def setup(argv) -> None:
  """Rejects stray positional arguments and quiets library INFO logs."""
  # Library INFO logs (orbax prints a dozen lines per save) would bury the
  # progress bar; warnings and errors still show.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; config values are set as "
                         "--config.KEY=VALUE (e.g. --config.batch_size=128).")


@contextlib.contextmanager
def clean_errors():
  """Turns the errors a user can fix (bad config, data, paths, NaN loss) into one
  line on stderr and exit status 1, instead of a traceback through JAX."""
  from mmjax.train.loop import NonFiniteLossError  # lazily: imports JAX

  try:
    yield
  except (ValueError, OSError, NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
