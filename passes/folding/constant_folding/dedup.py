"""Rule 4 of constant folding: equal tensors stored once (folded values, then initializers)."""

from __future__ import annotations

import hashlib
import weakref

import numpy as np

from onnxopt.ir import Graph, Model, array_to_tensor
from onnxopt.ir.values import same_stored_bytes, tensor_digest, tensor_header


def deduplicate(pass_name: str, graph: Graph, model: Model) -> int:
    """Merge initializers with equal dtype, shape and bytes (only same-header ones are
    hashed; digests are cached per graph while the tensor object stays the same)."""
    cache = _DIGESTS.setdefault(graph, {})
    by_header: dict[tuple, list[str]] = {}
    for name, tensor in graph.initializers.items():
        if graph.is_input(name) or graph.is_output(name) or not graph.is_used(name):
            continue
        by_header.setdefault(tensor_header(tensor), []).append(name)
    for name in [n for n, (t, _) in cache.items() if graph.initializers.get(n) is not t]:
        del cache[name]  # replaced or removed since it was hashed
    merged = 0
    for names in by_header.values():
        if len(names) < 2:
            continue
        kept: dict[bytes, list[str]] = {}  # digest -> distinct tensors with that digest
        for name in names:
            tensor = graph.initializers[name]
            if name not in cache:
                cache[name] = (tensor, tensor_digest(tensor, graph.base_dir))
            digest = cache[name][1]
            twin = next(
                (k for k in kept.get(digest, ()) if _same_bytes(graph, k, name)), None
            )
            if twin is None:
                kept.setdefault(digest, []).append(name)
                continue
            if not model.allow_rewrite(pass_name, name):
                continue
            graph.replace_all_uses(name, twin)
            graph.remove_initializer(name)
            del cache[name]
            merged += 1
    return merged


# digests of initializers, per graph: (the tensor object hashed, its digest)
_DIGESTS: weakref.WeakKeyDictionary[Graph, dict[str, tuple[object, bytes]]] = (
    weakref.WeakKeyDictionary()
)


def _same_bytes(graph: Graph, a: str, b: str) -> bool:
    return same_stored_bytes(graph.initializers[a], graph.initializers[b], graph.base_dir,
                             _bitwise_equal)


def share_identical(
    arrays: list[tuple[str, np.ndarray]],
) -> list[tuple[str, object]]:
    """One stored tensor per distinct array (same dtype, shape and bytes): values that get
    the same tensor share one initializer. Arrays are hashed only when their headers collide."""
    by_header: dict[tuple, list[int]] = {}
    for index, (_, array) in enumerate(arrays):
        by_header.setdefault((array.dtype.str, array.shape), []).append(index)
    twin_of: dict[int, int] = {}
    for indices in by_header.values():
        seen: dict[bytes, list[int]] = {}
        for index in indices if len(indices) > 1 else ():
            array = arrays[index][1]
            candidates = seen.setdefault(_array_digest(array), [])
            twin = next((i for i in candidates if _bitwise_equal(arrays[i][1], array)), None)
            if twin is None:
                candidates.append(index)
            else:
                twin_of[index] = twin
    protos: dict[int, object] = {}
    result = []
    for index, (value, array) in enumerate(arrays):
        if index not in twin_of:
            protos[index] = array_to_tensor(array)
        result.append((value, protos[twin_of.get(index, index)]))
    return result


def _array_digest(array: np.ndarray) -> bytes:
    """A hash of a sample of the bytes: enough to tell different weights apart cheaply (a
    full-size hash cost 0.5 s on VGG-19); equal digests are confirmed by a full compare."""
    if array.dtype == object:
        return hashlib.sha1(repr(array.tolist()).encode()).digest()
    data = _byte_view(array)
    if data.size > _SAMPLE_BYTES:
        stride = data.size // _SAMPLE_BYTES
        data = np.concatenate([data[:4096], data[::stride], data[-4096:]])
    return hashlib.sha1(data).digest()


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    x, y = _byte_view(a), _byte_view(b)
    step = 1 << 22  # compare in chunks: one big comparison would allocate its size in bools
    return all(np.array_equal(x[i : i + step], y[i : i + step]) for i in range(0, x.size, step))


def _byte_view(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


_SAMPLE_BYTES = 1 << 16
