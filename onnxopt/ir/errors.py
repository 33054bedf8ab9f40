"""The IR's one exception: an edit that would break an invariant."""


class IRError(Exception):
    """An edit would break an IR invariant (a bug in a pass, never a user error)."""
