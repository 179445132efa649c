"""``python -m leukoseg``: the same as the ``leukoseg`` command."""

import sys

from .cli import main

sys.exit(main())
