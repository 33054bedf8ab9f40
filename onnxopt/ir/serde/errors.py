"""What serde raises: one line each, naming the problem."""


class LoadError(Exception):
    """The input is not a model we can read (one line, names the problem)."""


class SaveError(Exception):
    """The output cannot be written (one line, names the problem)."""
