"""`python -m scripts.deploy`: a thin entry point; the code is `scones.deploy.cli`."""

import sys

from scones.deploy.cli import main

if __name__ == "__main__":
    sys.exit(main())
