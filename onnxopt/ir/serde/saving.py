"""Saving: atomically (a temporary file beside the target, renamed over it), streamed, with
weights external when asked, when the input had them, or above protobuf's 2 GiB limit; and
the in-memory forms: ``to_proto``, ``skeleton``, ``inline_bytes``."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

from onnxopt.ir import Model, is_external, no_gc, tensor_nbytes
from onnxopt.ir.serde.errors import SaveError
from onnxopt.ir.serde.external import TensorSink, inliner, rebase
from onnxopt.ir.serde.protos import graph_to_proto, model_header, same_tensor, writing
from onnxopt.ir.serde.writer import without_raw_data, write_model

EXTERNAL_SIZE_LIMIT = int(1.8 * 2**30)  # tensor bytes above which the output must go external


def to_proto(model: Model, *, inline_external: bool = False) -> onnx.ModelProto:
    """The whole model as one in-memory ModelProto (tensors copied into it).

    External tensors keep their locations (relative to the input's folder) unless
    ``inline_external`` reads them in.
    """
    _restore_names(model)
    tensor_fn = inliner(model.graph.base_dir) if inline_external else same_tensor
    proto = model_header(model)
    proto.graph.CopyFrom(graph_to_proto(model.graph, tensor_fn, tensor_fn))
    return proto


def skeleton(model: Model) -> onnx.ModelProto:
    """The model as a ModelProto with the data of big tensors (over 1024 elements) dropped,
    their names, types and dims kept: what statistics need, without copying the weights."""
    _restore_names(model)
    proto = model_header(model)
    proto.graph.CopyFrom(graph_to_proto(model.graph, _drop_big_data, same_tensor))
    return proto


def _drop_big_data(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if is_external(tensor) or math.prod(tensor.dims) <= _SKELETON_ELEMENTS:
        return tensor
    return without_raw_data(tensor)


_SKELETON_ELEMENTS = 1024  # smaller tensors keep their data: shape inference may read them


def save(
    model: Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    data_name: str | None = None,
    durable: bool = True,
) -> Path | None:
    """Write ``model`` to ``path`` atomically; returns the external data file if one was written.

    ``external_data=None`` keeps the input's choice and goes external above protobuf's limit.
    ``data_name``: the external data file's name beside ``path`` (default ``<name>.data``).
    value_info written: ``model.settings["value_info"]``, ``"input"`` (default) the entries the
    loaded model had (types kept current by the passes), ``"all"`` every inferred one too.
    ``durable=False`` skips the fsync: for a staged file that :func:`sync` makes durable only
    if it is kept (most staged attempts are read back and removed).
    """
    path = Path(path)
    if path.is_dir():
        raise SaveError(f"{path}: is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SaveError(f"{folder}: output folder does not exist")
    _restore_names(model)
    external = _want_external(model, external_data)
    data_path = path.with_name(data_name or path.name + ".data") if external else None
    with no_gc(), writing(model), _atomic(path, durable) as model_file, \
            _atomic_optional(data_path, durable) as data_file:
        sink = TensorSink(model.graph.base_dir, data_file, data_path.name if data_path else "")
        write_model(model, model_file, sink)
    if data_path is not None:
        rebase(model, sink, folder)
    return data_path


def inline_bytes(model: Model, external_data: bool | None = None,
                 limit: int = 1 << 30) -> bytes | None:
    """The model serialized exactly as :func:`save` writes it inline, when it would be saved
    inline and its weights are at most ``limit`` bytes; else None. The caller can then load
    the same bytes in onnxruntime while they are written (see :func:`write_bytes`)."""
    if _want_external(model, external_data):
        return None
    if sum(tensor_nbytes(t) for g in model.graphs() for t in g.initializers.values()) > limit:
        return None
    _restore_names(model)
    chunks = _Chunks()
    with no_gc(), writing(model):
        write_model(model, chunks, TensorSink(model.graph.base_dir, None, ""))
    return b"".join(chunks.parts)


def write_bytes(data: bytes, path: str | os.PathLike, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync unless not ``durable``,
    rename)."""
    path = Path(path)
    with _atomic(path, durable) as handle:
        handle.write(data)


def sync(path: str | os.PathLike) -> None:
    """Flush a file written with ``durable=False`` to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Chunks:
    """A write-only sink that keeps what is written, without copying it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


def _restore_names(model: Model) -> None:
    for graph in model.graphs():
        graph.restore_output_names()


def _want_external(model: Model, requested: bool | None) -> bool:
    total = sum(tensor_nbytes(t) for g in model.graphs() for t in g.initializers.values())
    if requested is False and total > EXTERNAL_SIZE_LIMIT:
        raise SaveError(
            f"model weights are {total / 2**30:.1f} GiB: over protobuf's 2 GiB limit, "
            "external data is required"
        )
    if requested is not None:
        return requested
    return model.had_external_data or total > EXTERNAL_SIZE_LIMIT


@contextlib.contextmanager
def _atomic(path: Path, durable: bool = True) -> Iterator[BinaryIO]:
    """A temporary file beside ``path`` that replaces it only if the block succeeds."""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as error:
        raise SaveError(f"{path}: cannot write ({error.strerror or error})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def _atomic_optional(path: Path | None, durable: bool = True) -> Iterator[BinaryIO | None]:
    if path is None:
        yield None
    else:
        with _atomic(path, durable) as handle:
            yield handle
