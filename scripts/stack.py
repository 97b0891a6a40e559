"""`python -m scripts.stack`: a thin entry point; the code is `scones.stack`."""

import sys

from scones.stack import main

if __name__ == "__main__":
    sys.exit(main())
