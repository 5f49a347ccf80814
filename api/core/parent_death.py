"""Children that stop when their parent dies, however it dies (Linux's parent-death signal)."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1
# Resolved in the parent: the child between fork and exec must not load libraries or take import locks.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def term_when_parent_dies() -> None:
    """A `preexec_fn`: runs in the child between fork and exec. If the parent dies (even by SIGKILL), the
    kernel sends the child SIGTERM: a trainer checkpoints and exits instead of running on as an orphan beside
    the job's next runner; `vitq serve`'s worker shuts down."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
