"""``python -m ember ...`` is the ``ember`` command."""
import gc

gc.disable()      # until the runtime's bring-up is done: see ember.launcher.cli.entry
from .launcher.cli import entry  # noqa: E402

entry()
