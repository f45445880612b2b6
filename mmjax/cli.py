"""What the two entry points share: argument checks and readable failures."""

import contextlib
import sys

from absl import app, logging
from ml_collections import config_flags


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
  line on stderr and exit status 1, instead of a traceback through JAX.

  A non-finite loss stops training with mmjax.train.actions.NonFiniteLossError,
  a FloatingPointError: caught as such, so this module imports nothing of JAX.
  """
  try:
    yield
  except (ValueError, OSError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def define_config(default: str, help_string: str):
  """DEFINE_config_file, with a mistyped --config.KEY reported in one line.

  ml_collections applies --config.KEY overrides while the flag is defined, so a
  key that does not exist surfaces here as a KeyError/AttributeError traceback.
  """
  try:
    return config_flags.DEFINE_config_file("config", default, help_string)
  except (AttributeError, KeyError) as e:
    keys = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
    raw = str(e.args[0] if e.args else e).replace("\\n", " ")
    hint = " ".join(raw.replace("\\", "").replace("'", "").split())
    print(f"error: unknown config key among {keys}: {hint}. Every key an experiment "
          "accepts is listed in mmjax/configs.py (base()).", file=sys.stderr, flush=True)
    sys.exit(1)

