"""``python -m coalition.cli``: the ``coalition`` command (the demo and the tests start
nodes this way, with the interpreter they run in)."""

import sys

from coalition.cli import main

sys.exit(main())
