"""``python -m timmlens.cli``: the ``timmlens`` command."""

import sys

from . import main

sys.exit(main())
