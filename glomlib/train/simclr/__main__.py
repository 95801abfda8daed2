import sys

from glomlib.train.simclr.cli import main

if __name__ == "__main__":
    sys.exit(main())
