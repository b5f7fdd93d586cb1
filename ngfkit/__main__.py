"""``python -m ngfkit`` is the same as the ``ngfkit`` command."""
import sys

from .cli import main

sys.exit(main())
