"""``python -m video_swin_vpetl`` == the ``video-swin-vpetl`` command."""

import sys

from video_swin_vpetl.cli import main

sys.exit(main())
