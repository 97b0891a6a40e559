"""`python -m scripts.train_job`: a thin entry point; the code is `scones.train_job`."""

import sys

from scones.train_job import main

if __name__ == "__main__":
    sys.exit(main())
