"""``python -m vse_infty`` == the ``vse-infty`` command (also what ``torchrun -m vse_infty train ...`` runs)."""

import sys

from vse_infty.cli import main

sys.exit(main())
