"""``python -m executors.testing certify TARGET``: see ``executors.testing.certify``."""

from __future__ import annotations

import sys

from .certify import main

if __name__ == "__main__":
    sys.exit(main())
