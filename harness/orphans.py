"""No orphan workers: a process torchrun started dies with its launcher, even when the launcher is killed hard.

torchrun forwards SIGTERM and SIGINT to its workers, but a `kill -9` of torchrun (or of the shell job around it)
leaves them running: blocked in a collective, holding GPUs and the rendezvous port. On Linux a worker can ask the
kernel to send it a signal when its parent dies (prctl PR_SET_PDEATHSIG); the `slim` command asks for SIGKILL first
thing under torchrun. Every file the harness writes goes through a temp file and a rename, so a killed worker
loses no finished file. srun's tasks are reaped by slurmstepd already and need nothing here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker's environment


def die_with_launcher() -> bool:
    """Under torchrun on Linux, have this process killed when its parent (the launcher) exits; True if armed."""
    if TORCHRUN_VARIABLE not in os.environ or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
    return True
