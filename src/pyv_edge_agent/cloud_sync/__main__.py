"""``python -m pyv_edge_agent.cloud_sync``: the ``cloud-sync`` command."""

import sys

from .cli import main

sys.exit(main())
