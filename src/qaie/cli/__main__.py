"""`python -m qaie.cli`: the `qaie` command."""

import sys

from qaie.cli import main

sys.exit(main())
