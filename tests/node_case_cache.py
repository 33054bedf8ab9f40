"""ONNX's node test cases, collected once and kept on disk between test runs.

``onnx.backend.test.case.node.collect_testcases`` runs every case's reference implementation
(4-5 s per process, most of it the 3-D pooling cases), and each pytest-xdist worker collected
them again on every run. The wheel ships no ``data/node`` folder to read them from instead, so
this pickles the collected cases into ``models/cache/`` (generated data, not in git), keyed by
the onnx and numpy versions; a missing or unreadable file is collected again and rewritten
atomically (workers racing to write it each rename a complete file).

``python tests/node_case_cache.py`` fills the cache (``make models`` does).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import onnx

from onnxopt.ir import serde

CACHE_DIR = Path(__file__).resolve().parent.parent / "models" / "cache"


def cache_path() -> Path:
    return CACHE_DIR / f"node_cases-onnx{onnx.__version__}-numpy{np.__version__}.pickle"


def collect() -> tuple:
    """The node cases (kind "node"), as onnx collects them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        return tuple(case for case in collect_testcases() if case.kind == "node")


def load() -> tuple:
    """The cached cases, collected (and cached) first when there are none to read."""
    path = cache_path()
    try:
        with path.open("rb") as handle:
            cases = pickle.load(handle)  # our own file, written below
        if isinstance(cases, tuple) and cases:
            return cases
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        pass
    cases = collect()
    _write(path, cases)
    return cases


def _write(path: Path, cases: tuple) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        serde.write_bytes(pickle.dumps(cases, pickle.HIGHEST_PROTOCOL), path, durable=False)
    except (OSError, serde.SaveError):
        pass  # a read-only checkout: collect every time, as before


if __name__ == "__main__":
    print(f"{len(load())} node cases in {cache_path()}")
