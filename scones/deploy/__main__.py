"""`python -m scones.deploy`."""

import sys

from scones.deploy.cli import main

sys.exit(main())
