"""python -m train.evaluate: kept where it is documented; the tool lives in train/ship/evaluate.py."""
import sys

from .ship.evaluate import main, parser  # noqa: F401  (the README test parses with it)

if __name__ == "__main__":
    sys.exit(main())
