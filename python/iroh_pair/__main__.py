"""``python -m iroh_pair``: the iroh-pair command."""

import sys

from .cli import main

sys.exit(main())
