"""``python -m kitlib.weights``: the command-line tool in :mod:`kitlib.tools.weights`."""
import sys

from kitlib.tools.weights import main

if __name__ == "__main__":
    sys.exit(main())
