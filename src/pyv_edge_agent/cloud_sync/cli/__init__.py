"""The ``cloud-sync`` command line: its commands (``_main``), their rendering (``_render``),
the self-contained demo (``_demo``) and the backend benchmark (``_bench``).

Nothing in the queue imports this package; ``python -m pyv_edge_agent.cloud_sync`` and the
``cloud-sync`` console script run ``main``.
"""

from ._main import main

__all__ = ["main"]
