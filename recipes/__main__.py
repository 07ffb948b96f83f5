"""`python -m recipes NAME [options]` is `zoo train NAME [options]`."""

import sys

from zoo.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
