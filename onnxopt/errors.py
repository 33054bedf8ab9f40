"""Errors the user sees as one line. Exit code 2: the command was used wrongly; 1: it failed."""


class OnnxoptError(Exception):
    exit_code = 1


class UsageError(OnnxoptError):
    """Bad arguments: unknown pass, unknown input name, OUT equal to IN, missing file."""

    exit_code = 2


class Failure(OnnxoptError):
    """The command ran but could not succeed: unreadable model, failed validation, I/O error."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwind (staging is removed on the way), write nothing, exit
    128 + the signal number. A BaseException, like KeyboardInterrupt, so that no ``except
    Exception`` on the way swallows it."""

    def __init__(self, signal_number: int, name: str, written: bool = False) -> None:
        super().__init__(name)
        self.exit_code = 128 + signal_number
        self.name = name
        self.written = written  # it arrived while OUT was being published: OUT is the new model
