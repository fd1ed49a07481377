"""``python -m rnnsym``: the same as the ``rnnsym`` command."""

import sys

from .cli import main

sys.exit(main())
