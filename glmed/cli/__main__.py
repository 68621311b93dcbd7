"""``python -m glmed.cli``: the ``glmed`` command."""

import sys

from glmed.cli import main

sys.exit(main())
