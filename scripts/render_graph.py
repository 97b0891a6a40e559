"""`python -m scripts.render_graph`: a thin entry point; the code is `scones.render_graph`."""

import sys

from scones.render_graph import main

if __name__ == "__main__":
    sys.exit(main())
