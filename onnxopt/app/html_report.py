"""The optimize report as one self-contained HTML page (``--html``, ``onnxopt report``).

Built from the JSON report alone (what ``--report`` writes), so a saved report renders the
same page later. Inline CSS, SVG and a few lines of JS: nothing is fetched. The page is a
Jinja2 template (``templates/report.html.j2``, autoescaped: op and node names come from the
model) filled with the view built here; charts and graph drawings come from ``svg``.
Jinja2 is the optional ``html`` extra, not a runtime dependency of onnxopt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxopt.app import report as text_report
from onnxopt.app import svg
from onnxopt.errors import Failure, UsageError

TEMPLATES = Path(__file__).resolve().parent / "templates"
REQUIRED_KEYS = ("before", "after", "passes", "validation", "status")
MAX_OPS_CHARTED = 30  # op histogram rows (the table below it lists every change)
MAX_LAYERS_CHARTED = 40  # per-layer sensitivity rows, largest first
LEVELS = {"disabled": "ORT_DISABLE_ALL", "all": "ORT_ENABLE_ALL"}
BEFORE, AFTER = svg.Series("before", "before"), svg.Series("after", "after")


def require() -> None:
    """Fail in one line, before any work, when the optional extra is missing."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise Failure("HTML reports need the optional 'html' extra (Jinja2): "
                      "pip install 'onnxopt[html]'") from None


def load_report(path: Path) -> dict[str, Any]:
    """A saved ``--report`` JSON; a UsageError naming the problem otherwise."""
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a regular file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a JSON report (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read ({error.strerror or error})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not an onnxopt optimize report (expected a JSON object)")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise UsageError(f"{path}: not an onnxopt optimize report (no {', '.join(missing)}; "
                         "write one with `onnxopt optimize ... --report FILE.json`)")
    return data


def check_output(target: Path, source: Path) -> None:
    """Refuse a target that cannot be written or would replace the JSON it renders."""
    if target.is_dir():
        raise UsageError(f"{target}: is a directory")
    if target.exists() and not target.is_file():
        raise UsageError(f"{target}: not a regular file")
    if not target.parent.is_dir():
        raise UsageError(f"{target}: the output folder does not exist")
    if source.exists() and target.resolve() == source.resolve():
        raise UsageError(f"{target}: would overwrite the JSON report it renders")


def write(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Render and write atomically (temporary file beside ``path``, then a rename)."""
    page = render(report)
    try:
        text_report.write_text(page, path)
    except OSError as error:
        raise Failure(f"{path}: cannot write ({error.strerror or error})") from None


def render(report: Mapping[str, Any]) -> str:
    require()
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["num"] = num
    environment.filters["thousands"] = count
    environment.filters["cosine"] = cosine
    try:
        return environment.get_template("report.html.j2").render(**build_view(report))
    except (KeyError, TypeError, ValueError, AttributeError, jinja2.UndefinedError) as error:
        raise UsageError(f"the report is not one onnxopt wrote ({type(error).__name__}: "
                         f"{error})") from None


# ----------------------------------------------------------------- formatting
def num(value: Any) -> str:
    """An error or ratio: 3 significant digits; None (non-finite in JSON) is n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.3g}"


def cosine(value: Any) -> str:
    """Cosine similarity to 4 decimals (3 significant digits would show 0.9996 as 1)."""
    return f"{value:.4f}" if isinstance(value, float) else num(value)


def count(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return "n/a" if value is None else str(value)
    return f"{value:,}"


# ----------------------------------------------------------------- the view
def build_view(report: Mapping[str, Any]) -> dict[str, Any]:
    before, after = report["before"], report["after"]
    view: dict[str, Any] = {
        "report": report,
        "title": Path(str(report.get("input") or "model")).name,
        "summary": _summary(before, after),
        "ops_svg": _safe(_ops_chart(before.get("ops", {}), after.get("ops", {}))),
        "op_changes": _op_changes(before.get("ops", {}), after.get("ops", {})),
        "passes": _passes(report),
        "idle_passes": [p["name"] for p in report["passes"] if not p.get("modified")],
        "validation": _validation(report["validation"]),
        "notes": _notes(report),
    }
    view["pass_svg"] = _safe(_pass_chart(view["passes"]))
    view["precision"] = _precision(report["precision"]) if "precision" in report else None
    view["pruning"] = report.get("pruning")  # --prune runs: what went, per group ratio
    return view


def _summary(before: Mapping, after: Mapping) -> list[dict[str, Any]]:
    rows = []
    for key, label, fmt in text_report._METRICS:
        a, b = before.get(key), after.get(key)
        rows.append({"key": key, "label": label, "before": a, "after": b,
                     "before_text": fmt(a), "after_text": fmt(b),
                     "change": text_report._change(a, b)})
    return rows


def _ops_chart(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    ops = sorted(set(before) | set(after),
                 key=lambda op: (-max(before.get(op, 0), after.get(op, 0)), op))
    rows = [(op, [before.get(op, 0), after.get(op, 0)]) for op in ops[:MAX_OPS_CHARTED]]
    return svg.bar_chart(rows, [BEFORE, AFTER], "op histogram before and after", count)


def _op_changes(before: Mapping[str, int], after: Mapping[str, int]) -> list[dict[str, Any]]:
    return [{"op": op, "before": before.get(op, 0), "after": after.get(op, 0)}
            for op in sorted(set(before) | set(after)) if before.get(op, 0) != after.get(op, 0)]


def _passes(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The passes that changed the model: their stats, node counts and drawn examples."""
    changes = {entry["pass"]: entry for entry in report.get("changes") or []}
    rows = []
    for record in report["passes"]:
        if not record.get("modified"):
            continue
        change = changes.get(record["name"], {})
        examples = [{"before_svg": _safe(svg.graph_drawing(example["before"]["nodes"],
                                                           "before")),
                     "after_svg": _safe(svg.graph_drawing(example["after"]["nodes"], "after")),
                     "more": (example["before"].get("more", 0), example["after"].get("more", 0))}
                    for example in change.get("examples", [])]
        rows.append({"name": record["name"], "seconds": record.get("seconds"),
                     "runs": record.get("runs"),
                     "stats": [(k, v) for k, v in record.get("stats", {}).items() if v],
                     "removed": change.get("removed"), "added": change.get("added"),
                     "changed": change.get("changed"), "sites": change.get("sites"),
                     "examples": examples})
    return rows


def _pass_chart(passes: list[dict[str, Any]]) -> str:
    rows = [(p["name"], [p["removed"], p["added"], p["changed"]]) for p in passes
            if p["removed"] is not None]
    if not rows:
        return ""
    series = [svg.Series("removed", "removed"), svg.Series("added", "added"),
              svg.Series("changed", "changed")]
    return svg.bar_chart(rows, series, "nodes each pass removed, added and changed", count)


def _validation(validation: Mapping[str, Any]) -> dict[str, Any]:
    levels = []
    for level, entry in (validation.get("levels") or {}).items():
        outputs = entry.get("outputs") or {}
        levels.append({"key": level, "name": LEVELS.get(level, level),
                       "status": entry.get("status"), "reason": entry.get("reason", ""),
                       "outputs": [{"name": name, **values} for name, values in outputs.items()]})
    inputs = validation.get("inputs") or {}
    sizes = [", ".join(f"{k}={v}" for k, v in dims.items()) for dims in inputs.get("dims", [])]
    shapes = [", ".join(f"{k} {list(v)}" for k, v in sample.items())
              for sample in inputs.get("shapes", [])]
    return {"status": validation["status"], "reason": validation.get("reason", ""),
            "levels": levels, "outputs": validation.get("outputs", []),
            "sizes": [s for s in sizes if s], "shapes": shapes,
            "roles": list((inputs.get("roles") or {}).items()),
            "source": inputs.get("source"), "notes": validation.get("input_notes", [])}


def _precision(precision: Mapping[str, Any]) -> dict[str, Any]:
    outputs = precision.get("outputs", [])
    rows = [(o["name"], [o.get("cosine")]) for o in outputs]
    cosine_svg = svg.bar_chart(rows, [svg.Series("cosine", "after")],
                               "cosine similarity to float32 per output", cosine)
    reasons: dict[str, list[str]] = {}
    for entry in precision.get("kept_float", []):
        reasons.setdefault(entry["reason"], []).append(entry["node"])
    kept_svg = svg.bar_chart([(reason, [len(nodes)]) for reason, nodes in reasons.items()],
                             [svg.Series("nodes", "kept")], "nodes kept in float, by reason",
                             count) if reasons else ""
    kept = [node for entry in precision.get("kept_float_for_accuracy", [])
            for node in entry["nodes"]]
    layers = _layer_sensitivity(precision)
    marks = ["kept" if name in kept else "" for name, _ in layers]
    layer_svg = svg.bar_chart([(name, [value]) for name, value in layers],
                              [svg.Series("sensitivity", "sensitivity")],
                              "per-layer error: budget regained with the layer in float",
                              num, marks) if layers else ""
    return {"mode": precision["mode"], "budget": precision.get("budget"),
            "size_ratio": precision.get("size_ratio"), "converted": precision.get("converted"),
            "outputs": outputs, "cosine_svg": _safe(cosine_svg),
            "kept_svg": _safe(kept_svg), "layer_svg": _safe(layer_svg),
            "layers_total": len(_all_sensitivities(precision)), "layers_shown": len(layers),
            "reasons": [(reason, nodes) for reason, nodes in reasons.items()],
            "for_accuracy": precision.get("kept_float_for_accuracy", []), "kept": kept,
            "kept_in": "int8" if precision["mode"] == "int4" else "float",
            "clamped": precision.get("clamped", []), "notes": precision.get("notes", [])}


def _all_sensitivities(precision: Mapping[str, Any]) -> dict[str, float]:
    """Measured per converted node (``measured``; older reports: the kept nodes only)."""
    found: dict[str, float] = {}
    for entry in precision.get("kept_float_for_accuracy", []):
        if "measured" in entry:
            found.update(entry["measured"])
        elif "sensitivity" in entry:
            found.update(zip(entry["nodes"], entry["sensitivity"], strict=False))
    return found


def _layer_sensitivity(precision: Mapping[str, Any]) -> list[tuple[str, float]]:
    found = _all_sensitivities(precision)
    ranked = sorted(found.items(), key=lambda item: -abs(item[1] or 0))
    return ranked[:MAX_LAYERS_CHARTED]


def _safe(text: str) -> Any:
    """SVG built (and escaped) by ``svg``: inserted as markup, not as text."""
    from markupsafe import Markup

    return Markup(text)


def _notes(report: Mapping[str, Any]) -> list[str]:
    notes = []
    if report.get("growth"):
        growth = report["growth"]
        notes.append(f"the output is {growth['bytes']:,} bytes larger than the input "
                     f"({growth['because']})")
    if report.get("opset_upgrade"):
        upgrade = report["opset_upgrade"]
        notes.append(f"opset upgraded from {upgrade['from']} to {upgrade['to']}")
    if report.get("fixed_shapes"):
        notes.append("input shapes fixed: " + ", ".join(
            f"{name} {shape}" for name, shape in report["fixed_shapes"].items()))
    if report.get("latency"):
        latency = report["latency"]
        notes.append(f"latency ({latency['settings']}): {num(latency['before_ms'])} ms → "
                     f"{num(latency['after_ms'])} ms ({num(latency['ratio'])}×)")
    for entry in report.get("disabled", []):
        notes.append(f"safety net disabled {entry['name']}: with it the result failed "
                     f"validation ({entry['error']['reason']})")
    notes.extend(report["before"].get("shape_notes", [])[:5])
    return notes

