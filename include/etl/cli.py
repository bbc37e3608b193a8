"""``python -m etl.cli run|test-connection|sync|check|...``: the same command line as ``sndw``."""

from __future__ import annotations

import sys

from sndw.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
