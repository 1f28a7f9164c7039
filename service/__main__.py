"""``python -m service`` runs the server."""

import sys

from service.main import main

sys.exit(main())
