"""User-facing errors: one clear line naming the field and the allowed values, never a traceback."""


class UserError(ValueError):
    """Bad input from the user (config, paths, checkpoints). The CLI prints it as one line and exits 2."""


REQUEUE_EXIT = 75  # EX_TEMPFAIL: stopped on a signal with last.ckpt written; rerunning the command resumes there


class Preempted(Exception):
    """Training stopped on a stop signal (train.stop_signals) after every rank wrote last.ckpt at a step boundary.
    The CLI prints it as one line and exits REQUEUE_EXIT, which a requeue script tests for."""
