"""The compiled parts of the ingest's per-message path: its batch receive
(pipeline/_router_receive.c) and the journal writer's record layout
(pipeline/_record_layout.c).

Everything else about the package is in pyproject.toml. Both extensions are
optional: where one cannot be built (no C compiler, not Linux) the install goes
on and the same work is done in Python (pipeline/router_receive.py,
pipeline/direct_record_writer.py).
"""

import sys

from setuptools import Extension, setup

extensions = [Extension("pipeline._record_layout", ["pipeline/_record_layout.c"], optional=True)]
if sys.platform.startswith("linux"):  # the receive finds pyzmq's libzmq with dl_iterate_phdr
    extensions.append(Extension("pipeline._router_receive", ["pipeline/_router_receive.c"], optional=True))

setup(ext_modules=extensions)
