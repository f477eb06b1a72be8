"""`python -m aladin` runs the CLI."""

import sys

from aladin.cli.main import main

sys.exit(main())
