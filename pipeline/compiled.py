"""Whether the compiled parts of the ingest's per-message path may run.

Two C extensions (built by ``pip install`` where a C compiler is; see
setup.py) take over work the Python code does too: the event loop's batch
receive (:mod:`pipeline.router_receive`) and the journal writer's record
layout (:mod:`pipeline.direct_record_writer`). Each falls back to its Python
twin where it was not built or cannot run; ``REFINERY_PURE_PYTHON=1`` in the
environment chooses the Python twins everywhere (to compare the two, or to
rule the C out when chasing a fault).
"""

from __future__ import annotations

import os


def pure_python_chosen() -> bool:
    """True when ``REFINERY_PURE_PYTHON`` is set to anything but "" or "0"."""
    return os.environ.get("REFINERY_PURE_PYTHON", "") not in ("", "0")
