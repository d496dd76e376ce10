"""``python -m pipelines.cli`` = the ``lstc`` console script."""

import sys

from pipelines.cli import main

sys.exit(main())
