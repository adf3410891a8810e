"""python -m train.predict: kept where it is documented; the tool lives in train/ship/predict.py."""
import sys

from .ship.predict import main, parser  # noqa: F401  (the README test parses with it)

if __name__ == "__main__":
    sys.exit(main())
