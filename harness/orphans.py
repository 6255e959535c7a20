"""No orphan workers: a process torchrun or the grid started dies with its parent, even when that is killed hard.

torchrun forwards SIGTERM and SIGINT to its workers, but a `kill -9` of torchrun (or of the shell job around it)
leaves them running: blocked in a collective, holding GPUs and the rendezvous port. On Linux a process can ask the
kernel to send it a signal when its parent dies (prctl PR_SET_PDEATHSIG): the `slim` command asks for SIGKILL first
thing under torchrun, and a grid's worker processes ask for it against the grid process. Every file the harness
writes goes through a temp file and a rename, so a killed worker loses no finished file. srun's tasks are reaped by
slurmstepd already and need nothing here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker's environment


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere only the check below runs),
    and die now if the parent is already gone (it may have died before the request was made)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def die_with_launcher() -> None:
    """Under torchrun, `die_with_parent` of the launcher that started this worker; elsewhere nothing. A launcher
    killed while this worker was still starting has left it to init already (parent pid 1): it dies at once."""
    if TORCHRUN_VARIABLE not in os.environ:
        return
    launcher = os.getppid()
    if launcher == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    die_with_parent(launcher)
