"""`python -m scripts.etl`: a thin entry point; the code is `scones.etl`."""

import sys

from scones.etl.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
