"""``python -m livedata.testing.chaos``: see :mod:`livedata.testing.chaos.cli`."""
import sys

from livedata.testing.chaos.cli import main

sys.exit(main())
