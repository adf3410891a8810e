"""python -m train.export: kept where it is documented; the tool lives in train/ship/export.py."""
import sys

from .ship.export import main, parser  # noqa: F401  (the README test parses with it)

if __name__ == "__main__":
    sys.exit(main())
