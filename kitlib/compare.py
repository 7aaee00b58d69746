"""``python -m kitlib.compare``: the command-line tool in :mod:`kitlib.tools.compare`."""
import sys

from kitlib.tools.compare import main

if __name__ == "__main__":
    sys.exit(main())
