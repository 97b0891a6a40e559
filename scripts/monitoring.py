"""`python -m scripts.monitoring`: a thin entry point; the code is `scones.monitoring.report`."""

import sys

from scones.monitoring.report import main

if __name__ == "__main__":
    sys.exit(main())
