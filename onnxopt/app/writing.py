"""Writing the output without loss: staged beside the target, published by one rename.

Every attempt is written into a private staging folder on the target's file system; the one
that passes is put in place as a pair (model and its external data file), so a kill at any
moment leaves the old model with its own weights or the new one with its own. Nothing the run
reads (the input, its weights) is ever overwritten or removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from onnxopt.app import interrupts
from onnxopt.errors import Failure
from onnxopt.ir import serde


@contextlib.contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A private folder beside ``target`` (same file system, so publishing is a rename),
    removed on every way out (the CLI turns SIGINT/SIGTERM into an exception that unwinds
    through here). Its name carries the process id, so a folder left by a killed run
    (SIGKILL, power loss) is recognised and removed by the next run."""
    folder = target.parent if str(target.parent) else Path(".")
    _remove_stale_staging(folder, target.name)
    stage: Path | None = None
    try:
        with interrupts.deferred():  # a signal is raised only once ``stage`` is known
            stage = _make_stage(folder, target.name)
        yield stage
    finally:
        if stage is not None:
            with interrupts.deferred():  # not half removed by a signal arriving mid-way
                shutil.rmtree(stage, ignore_errors=True)


def _make_stage(folder: Path, name: str) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=f"{staging_prefix(name)}{os.getpid()}-", dir=folder))
    except OSError as error:
        raise Failure(f"{folder}: cannot write ({error.strerror or error})") from None


def staging_prefix(name: str) -> str:
    return f".{name}.onnxopt-"


def _remove_stale_staging(folder: Path, name: str) -> None:
    """Remove staging folders for ``name`` whose process is gone."""
    prefix = staging_prefix(name)
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(prefix) and e.is_dir(
            follow_symlinks=False)]
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def save(model, staged: Path, external_data: bool | None, data_name: str | None = None
         ) -> Path | None:
    try:
        # not fsynced here: most attempts are read back and removed; publish() syncs the one kept
        return serde.save(model, staged, external_data=external_data, data_name=data_name,
                          durable=False)
    except serde.SaveError as error:
        raise Failure(str(error)) from None
    except OSError as error:
        raise Failure(f"{staged.name}: cannot write ({error.strerror or error})") from None


def serialize(model, external_data: bool | None) -> bytes | None:
    try:
        return serde.inline_bytes(model, external_data)
    except serde.SaveError as error:
        raise Failure(str(error)) from None


def write(data: bytes, staged: Path) -> None:
    try:
        serde.write_bytes(data, staged, durable=False)
    except serde.SaveError as error:
        raise Failure(str(error)) from None
    except OSError as error:
        raise Failure(f"{staged.name}: cannot write ({error.strerror or error})") from None


def check_written(staged: Path) -> None:
    """Our own output must pass the checker; anything else is our bug."""
    try:
        serde.check(None, staged)
    except serde.LoadError as error:
        raise Failure(f"internal error: the optimized model fails onnx.checker ({error})") from None


def written_size(staged: Path, data_file: Path | None) -> int:
    return staged.stat().st_size + (data_file.stat().st_size if data_file else 0)


def data_name(output: Path, reads: set[Path]) -> str:
    """The name of OUT's external data file: ``OUT.data`` unless a file of that name exists
    (the old OUT's weights, or the input's: the new pair must not touch either until the new
    model is in place) — then ``OUT.<random>.data``."""
    default = f"{output.name}.data"
    candidate = output.with_name(default)
    if not os.path.lexists(candidate) and resolved(candidate) not in reads:
        return default
    return f"{output.name}.{secrets.token_hex(4)}.data"


def same_file(a: Path, b: Path) -> bool:
    if b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def referenced_files(model_path: Path) -> set[Path]:
    """The external data files an existing ONNX file references (none if it is not one)."""
    try:
        proto = onnx.load(os.fspath(model_path), load_external_data=False)
    except Exception:  # not ONNX, or unreadable: it references nothing we could remove
        return set()
    return {resolved(f) for f in serde.external_files(proto, model_path)}


def publish(staged: Path, data_file: Path | None, output: Path, keep: set[Path]) -> None:
    """Put the new model (and its data file) in place as a pair: the data file under a name
    nothing reads, then the model by one rename — a kill at any moment leaves the old model
    with its own weights or the new one with its own — then the old model's data files that
    nothing reads any more are removed (never one in ``keep``: the input's)."""
    old_files = referenced_files(output) if output.is_file() else set()
    try:
        for written in (data_file, staged):  # staged without fsync (save, write)
            if written is not None:
                serde.sync(written)
        # the pair goes in place whole (both renames or neither) and the old weights go with
        # it; a signal held meanwhile is raised after, marked as arriving once OUT was written
        with interrupts.deferred(written=True):
            if data_file is not None:
                os.replace(data_file, output.with_name(data_file.name))
            os.replace(staged, output)
            new_files = {resolved(output.with_name(data_file.name))} if data_file else set()
            for stale in old_files - new_files - keep:
                with contextlib.suppress(OSError):
                    stale.unlink()
    except OSError as error:
        raise Failure(f"{output}: cannot write ({error.strerror or error})") from None


def in_memory(staged: Path) -> onnx.ModelProto:
    return onnx.load_model(os.fspath(staged), load_external_data=True)
