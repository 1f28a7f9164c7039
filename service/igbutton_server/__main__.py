"""``python -m igbutton_server`` runs the server."""

import sys

from igbutton_server.main import main

sys.exit(main())
