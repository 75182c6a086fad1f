"""``python -m dispatcher``: the same as the ``switchyard`` command."""

import sys

from dispatcher.cli import main

sys.exit(main())
