"""``python -m kitlib.doctor``: the command-line tool in :mod:`kitlib.tools.doctor`."""
import sys

from kitlib.tools.doctor import main

if __name__ == "__main__":
    sys.exit(main())
