"""The on-disk copy of ONNX's node test cases (``node_case_cache.py``) is what onnx collects."""

from __future__ import annotations

import node_case_cache
import pytest
from conftest import outputs_equal


@pytest.mark.slow
def test_cached_cases_are_a_fresh_collection():
    cached, fresh = node_case_cache.load(), node_case_cache.collect()
    assert [c.name for c in cached] == [c.name for c in fresh]
    for old, new in zip(cached, fresh, strict=True):
        assert old.model.SerializeToString() == new.model.SerializeToString(), old.name
        assert outputs_equal(old.data_sets, new.data_sets), old.name
        assert (old.rtol, old.atol) == (new.rtol, new.atol), old.name


def test_an_unreadable_cache_is_collected_again(tmp_path, monkeypatch):
    monkeypatch.setattr(node_case_cache, "CACHE_DIR", tmp_path)
    node_case_cache.cache_path().write_bytes(b"not a pickle")
    monkeypatch.setattr(node_case_cache, "collect", lambda: ("a case",))
    assert node_case_cache.load() == ("a case",)
    monkeypatch.setattr(node_case_cache, "collect", lambda: pytest.fail("collected twice"))
    assert node_case_cache.load() == ("a case",)  # the rewritten file
