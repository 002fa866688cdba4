"""``python -m pyv_edge_agent.cloud_sync.cli``: the ``cloud-sync`` command."""

import sys

from . import main

sys.exit(main())
