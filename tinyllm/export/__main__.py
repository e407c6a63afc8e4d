"""`python -m tinyllm.export`: as `tinyllm-export`."""

import sys

from tinyllm.export.program import main

sys.exit(main())
