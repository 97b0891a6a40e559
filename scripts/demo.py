"""`python -m scripts.demo`: a thin entry point; the code is `scones.demo`."""

import sys

from scones.demo import main

if __name__ == "__main__":
    sys.exit(main())
