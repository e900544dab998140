"""`python -m lowbit.cli ...`: the `lowbit` command."""

import sys

from lowbit.cli.commands import main

sys.exit(main())
