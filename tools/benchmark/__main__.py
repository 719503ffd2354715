from __future__ import annotations

import sys

from tools.benchmark.cli import main

sys.exit(main())
