"""`python -m carmp`: the `carmp` command."""

import sys

from carmp.cli.main import main

sys.exit(main())
