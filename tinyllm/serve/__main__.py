"""`python -m tinyllm.serve [MODEL] [--port 8000] ...` (as `tinyllm-serve`)."""

import sys

from tinyllm.serve.server import main

sys.exit(main())
