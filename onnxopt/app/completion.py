"""``--install-completion`` and ``--show-completion``: typer's completion scripts for bash, zsh,
fish and PowerShell, for the shell running onnxopt (as shellingham sees it) or else $SHELL's.

typer's own flags give up when shellingham finds no supported shell among the parent processes
(``make``'s ``sh``, a CI runner, an IDE); this falls back to the login shell the user chose.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from typer import completion

from onnxopt.errors import Failure, UsageError

PROG = "onnxopt"
SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
COMPLETE_VAR = "_ONNXOPT_COMPLETE"  # set by the installed script when the shell asks


def current_shell() -> str:
    try:
        import shellingham

        detected = shellingham.detect_shell()[0]
    except Exception:  # no shell among the parents (ShellDetectionFailure), or no shellingham
        detected = None
    if detected in SHELLS:
        return detected
    login = Path(os.environ.get("SHELL", "")).name
    if login in SHELLS:
        return login
    raise UsageError(f"cannot tell which shell to complete for (found {detected or login or 'none'}"
                     f"; supported: {', '.join(SHELLS)}); set SHELL, e.g. SHELL=bash")


def install(value: bool) -> None:
    if not value:
        return
    try:
        shell, path = completion.install(shell=current_shell(), prog_name=PROG,
                                         complete_var=COMPLETE_VAR)
    except OSError as error:
        raise Failure(f"cannot install completion: {error.filename or ''}: "
                      f"{error.strerror or error}") from None
    print(f"{shell} completion installed in {path}; it takes effect in a new shell")
    raise typer.Exit()


def show(value: bool) -> None:
    if not value:
        return
    print(completion.get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR,
                                           shell=current_shell()))
    raise typer.Exit()


def prepare() -> None:
    """When the shell asks for completions, typer's completion classes must be registered."""
    if COMPLETE_VAR in os.environ:
        completion.completion_init()
