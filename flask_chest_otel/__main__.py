"""``python -m flask_chest_otel demo``."""

import sys

from .cli import main

sys.exit(main())
