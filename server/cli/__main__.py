"""``python -m sealog.server.cli``: the ``sealog`` command without its console script."""

import sys

from sealog.server.cli import main

sys.exit(main())
