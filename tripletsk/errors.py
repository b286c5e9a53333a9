class UserError(Exception):
    """A mistake in the user's input: the CLI prints it as one line and exits 1."""
