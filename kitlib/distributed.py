"""Moved to ``kitlib.tools.distributed``; ``python -m kitlib.distributed`` still works for one release."""
from __future__ import annotations

import sys
import warnings

from kitlib.tools.distributed import *  # noqa: F401,F403
from kitlib.tools.distributed import main

if __name__ == "__main__":
    warnings.warn("python -m kitlib.distributed moved to python -m kitlib.tools.distributed", DeprecationWarning,
                  stacklevel=1)
    sys.exit(main())
