"""User-facing errors: one clear line naming the field and the allowed values, never a traceback."""


class UserError(ValueError):
    """Bad input from the user (config, paths, checkpoints). The CLI prints it as one line and exits 2."""
