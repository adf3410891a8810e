"""python -m train.evaluate: kept where it is documented; the tool lives in train/ship/evaluate.py."""
import sys

from .ship.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
