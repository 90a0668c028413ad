"""``python -m mvfa_lite`` is the ``mvfa-lite`` command."""
import sys

from .tools.cli import main

sys.exit(main())
