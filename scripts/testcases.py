"""`python -m scripts.testcases`: a thin entry point; the code is `scones.testcases`."""

import sys

from scones.testcases import main

if __name__ == "__main__":
    sys.exit(main())
