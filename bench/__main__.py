"""``python -m bench``: every benchmark section, one table, one plot (bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
