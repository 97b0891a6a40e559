"""`python -m scones.monitoring`: build the monitoring report."""

import sys

from scones.monitoring.report import main

sys.exit(main())
