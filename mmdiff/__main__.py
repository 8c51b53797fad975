r"""``python -m mmdiff``: the command-line interface."""
import sys

from mmdiff.cli import main

if __name__ == "__main__":
    sys.exit(main())
