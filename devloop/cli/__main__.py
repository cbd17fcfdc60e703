"""`python -m devloop.cli`: the same as the `devloop` command."""

import sys

from devloop.cli import main

sys.exit(main())
