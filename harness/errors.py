"""User-facing errors: one clear line naming the field and the allowed values, never a traceback."""


class UserError(ValueError):
    """Bad input from the user (config, paths, checkpoints). The CLI prints it as one line and exits 2."""


REQUEUE_EXIT = 75  # EX_TEMPFAIL: stopped on a signal with last.ckpt written; rerunning the command resumes there


INTERRUPTED_EXIT = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


class Interrupted(KeyboardInterrupt):
    """Training ended by Ctrl-C (Lightning shut it down gracefully). The CLI prints it as one line naming the
    checkpoint a rerun resumes from, also in the quiet default where Lightning's own notice is hidden. Still a
    KeyboardInterrupt, so no `except Exception` (a grid's cell runner) swallows it: Ctrl-C stops the grid."""


class Preempted(SystemExit):
    """Training stopped on a stop signal (train.stop_signals) after every rank wrote last.ckpt at a step boundary.
    The CLI prints it as one line and exits REQUEUE_EXIT, which a requeue script tests for. A SystemExit, so no
    `except Exception` swallows it: the process ends, as the cluster asked."""
