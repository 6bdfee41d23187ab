"""Entry point of the shepherd's warm template: ``python -m ember._template``
(see ember.shepherd.template)."""
import sys

from .shepherd.template import main

if __name__ == "__main__":
    sys.exit(main())
