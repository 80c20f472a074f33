"""``python -m iroh_pair``: the iroh-pair command."""

import sys

from iroh_pair.cli import main

sys.exit(main())
