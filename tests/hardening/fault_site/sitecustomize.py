"""Loaded by a server process the cache-fault tests start where no tmpfs can be mounted: every write under
$CLIPSCOPE_TEST_ENOSPC fails with ENOSPC, as on a full disk (see tests/hardening/faults.py)."""

import os
import sys

if os.environ.get("CLIPSCOPE_TEST_ENOSPC"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from faults import install_enospc

    install_enospc(os.environ["CLIPSCOPE_TEST_ENOSPC"])
    sys.path.pop(0)
