"""``python -m ember ...`` is the ``ember`` command."""
import sys

from .launcher.cli import main

sys.exit(main())
