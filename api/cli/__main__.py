"""`python -m api.cli ...` runs the `vitq` command."""

import sys

from api.cli.main import main

sys.exit(main())
