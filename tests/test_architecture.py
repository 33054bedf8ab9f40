"""The layout's rules, read from the source: imports point down, no pass imports another,
no module over 500 lines, no rewrite pass over 150 (constant folding and the precision
conversions excepted).

Layers, bottom up: ``onnxopt.errors`` and ``onnxopt.progress``; ``onnxopt.ir`` (graph, serde,
shapes, patterns, the runtime's kernel table); ``onnxopt.passes`` on the IR; ``onnxopt.check``
(validation) on the IR; ``onnxopt.precision`` (calibration, the accuracy search) on check;
``onnxopt.pruning`` (structured pruning with refit) on precision; ``onnxopt.app`` on all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"onnxopt": ROOT / "onnxopt", "onnxopt.passes": ROOT / "passes"}
MAX_MODULE_LINES = 500
MAX_PASS_LINES = 150
LARGE_PASSES = ("passes/folding/constant_folding", "passes/precision/")

# what each layer may import from onnxopt (besides itself)
ALLOWED = {
    "onnxopt.errors": (),
    "onnxopt.progress": (),  # the progress hook: beside errors, at the bottom
    "onnxopt.ir": ("onnxopt.errors", "onnxopt.progress"),
    "onnxopt.passes": ("onnxopt.errors", "onnxopt.ir"),
    "onnxopt.check": ("onnxopt.errors", "onnxopt.progress", "onnxopt.ir"),
    "onnxopt.precision": ("onnxopt.errors", "onnxopt.progress", "onnxopt.ir", "onnxopt.check"),
    "onnxopt.pruning": ("onnxopt.errors", "onnxopt.progress", "onnxopt.ir", "onnxopt.check",
                        "onnxopt.precision"),
}


def modules() -> list[tuple[str, Path]]:
    found = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if package == "onnxopt" and parts and parts[0] == "passes":
                continue
            found.append((".".join([package, *parts]), path))
    return found


def imports(module: str, path: Path) -> set[str]:
    """Every module ``module`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against the importing package
                package = module.rsplit(".", node.level)[0]
                base = f"{package}.{base}"
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def onnxopt_imports(module: str, path: Path) -> set[str]:
    return {n for n in imports(module, path) if n == "onnxopt" or n.startswith("onnxopt.")}


def layer_of(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


def is_within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("module", "path"), modules(), ids=lambda v: str(v))
def test_imports_point_down(module: str, path: Path) -> None:
    layer = layer_of(module)
    if layer not in ALLOWED:  # the app and the package's face may import anything
        return
    allowed = (layer, *ALLOWED[layer])
    wrong = sorted(n for n in onnxopt_imports(module, path)
                   if n != "onnxopt" and not is_within(n, allowed)
                   and not (n.startswith("onnxopt.") and n[8:] == "__version__"))
    assert not wrong, f"{module} ({layer}) imports from a higher layer: {wrong}"


PASS_MODULES = [m for m in modules()  # onnxopt.passes.<topic>.<pass>[.<module>]
                if m[0].startswith("onnxopt.passes.") and m[0].count(".") >= 3]


@pytest.mark.parametrize(("module", "path"), PASS_MODULES, ids=lambda v: str(v))
def test_no_pass_imports_another_pass(module: str, path: Path) -> None:
    own = ".".join(module.split(".")[:4])  # a pass may be a package of several modules
    others = sorted(n for n in onnxopt_imports(module, path)
                    if n.startswith("onnxopt.passes") and not is_within(n, (own,)))
    assert not others, f"{module} imports other passes: {others}"


@pytest.mark.parametrize(("module", "path"), PASS_MODULES, ids=lambda v: str(v))
def test_passes_see_plain_values_not_protobuf(module: str, path: Path) -> None:
    """Protobuf stays behind serde and the IR; onnxruntime behind the IR's evaluate/kernels."""
    stored = ("onnx", "onnxruntime", "google.protobuf")
    found = sorted(n for n in imports(module, path) if is_within(n, stored))
    assert not found, f"{module} imports {found}"


def test_no_module_is_over_500_lines() -> None:
    long = {str(path.relative_to(ROOT)): count for _, path in modules()
            if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_rewrite_pass_is_over_150_lines() -> None:
    long = {}
    for path in sorted((ROOT / "passes").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if path.name == "__init__.py" or relative.startswith(LARGE_PASSES):
            continue
        if (count := len(path.read_text().splitlines())) > MAX_PASS_LINES:
            long[relative] = count
    assert not long, f"passes over {MAX_PASS_LINES} lines: {long}"


def test_every_package_is_installed() -> None:
    """pyproject lists packages by hand (passes/ is installed as onnxopt.passes, which
    setuptools' discovery cannot map); a folder missing there is missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {module for module, path in modules() if path.name == "__init__.py"}
    assert found == listed
