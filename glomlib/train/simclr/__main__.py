"""``python -m glomlib.train.simclr``: what torchrun launches (the options of ``glomlib ssl``)."""

import sys

from glomlib.train.simclr.cli import main

if __name__ == "__main__":
    sys.exit(main())
