"""``python -m ember ...`` is the ``ember`` command."""
from .launcher.cli import entry

entry()
