"""``python -m vl_adapter_vlpet`` == the ``vl-pet`` command (``torchrun ... -m vl_adapter_vlpet train ...``)."""

import sys

from vl_adapter_vlpet.cli import main

sys.exit(main())
