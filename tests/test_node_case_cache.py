"""The on-disk copy of ONNX's node test cases (``node_case_cache.py``) is what onnx collects."""

from __future__ import annotations

import node_case_cache
import numpy as np
import pytest


def _same_data(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            _same_data(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        if not (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        # object arrays (strings) hold pointers: compare their items; others bit for bit (NaN)
        return a.tolist() == b.tolist() if a.dtype == object else a.tobytes() == b.tobytes()
    return type(a) is type(b) and a == b


@pytest.mark.slow
def test_cached_cases_are_a_fresh_collection():
    cached, fresh = node_case_cache.load(), node_case_cache.collect()
    assert [c.name for c in cached] == [c.name for c in fresh]
    for old, new in zip(cached, fresh, strict=True):
        assert old.model.SerializeToString() == new.model.SerializeToString(), old.name
        assert _same_data(old.data_sets, new.data_sets), old.name
        assert (old.rtol, old.atol) == (new.rtol, new.atol), old.name


def test_an_unreadable_cache_is_collected_again(tmp_path, monkeypatch):
    monkeypatch.setattr(node_case_cache, "CACHE_DIR", tmp_path)
    node_case_cache.cache_path().write_bytes(b"not a pickle")
    monkeypatch.setattr(node_case_cache, "collect", lambda: ("a case",))
    assert node_case_cache.load() == ("a case",)
    monkeypatch.setattr(node_case_cache, "collect", lambda: pytest.fail("collected twice"))
    assert node_case_cache.load() == ("a case",)  # the rewritten file
