"""``python -m igbutton`` runs the command line."""

import sys

from igbutton.cli import main

sys.exit(main())
