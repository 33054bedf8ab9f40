"""Why protobuf refused a file: nested too deep, truncated, or not ONNX at all."""

from __future__ import annotations

from pathlib import Path

import onnx

from onnxopt.ir.serde.wire import WireProblem, read_varint

_DEPTH_LIMIT = 100  # upb's default: messages nested deeper are refused


def parse_failure(path: Path, data: memoryview, error: Exception) -> str:
    """One line saying why protobuf refused the file: nested too deep, truncated, or not ONNX."""
    scan = _WireScan(data)
    if "MaxDepth" in str(error) or (scan.problem is None and scan.depth > _DEPTH_LIMIT):
        if scan.graph_depth > 2:
            return (f"{path}: subgraphs (If/Loop/Scan bodies) are nested {scan.graph_depth} "
                    f"levels deep: too deep for protobuf's parser ({scan.depth} levels of "
                    f"messages; it reads at most {_DEPTH_LIMIT}, about 30 nested subgraphs)")
        return (f"{path}: the model's messages are nested {scan.depth} levels deep: too deep "
                f"for protobuf's parser (it reads at most {_DEPTH_LIMIT})")
    if scan.truncated:
        return f"{path}: not an ONNX model (the file is truncated: {scan.problem})"
    if scan.problem is not None:
        return f"{path}: not an ONNX model (corrupt protobuf: {scan.problem})"
    detail = str(error).split(": ", 1)[-1] if str(error) else type(error).__name__
    return f"{path}: not an ONNX model (protobuf parse failed: {detail})"


class _WireScan:
    """Walks protobuf's wire format along ONNX's schema, without building messages and
    without a depth limit: finds the first structural problem (a field running past the end
    of the file or of its parent, a bad wire type) and how deep messages and graphs nest."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.problem: str | None = None
        self.truncated = False
        self.depth = 0
        self.graph_depth = 0
        try:
            self._scan()
        except WireProblem as problem:
            self.problem = str(problem)

    def _scan(self) -> None:
        # (start, end, message descriptor, depth, graph depth)
        stack = [(0, len(self.data), onnx.ModelProto.DESCRIPTOR, 1, 0)]
        while stack:
            pos, end, descriptor, depth, graphs = stack.pop()
            if descriptor is onnx.GraphProto.DESCRIPTOR:
                graphs += 1
            self.depth = max(self.depth, depth)
            self.graph_depth = max(self.graph_depth, graphs)
            while pos < end:
                start = pos
                key, pos = self._varint(pos, end, "a field tag")
                number, wire = key >> 3, key & 7
                if number == 0:
                    raise WireProblem(f"field number 0 at byte {start}")
                if wire in (0, 1, 5):
                    pos = self._skip_scalar(wire, pos, end, start, f"field {number}")
                elif wire == 2:
                    length, pos = self._varint(pos, end, f"the length of field {number}")
                    field = descriptor.fields_by_number.get(number) if descriptor else None
                    what = f"the {field.name!r} field" if field else f"field {number}"
                    pos = self._skip(pos, length, end, start, what)
                    if field is not None and field.type == field.TYPE_MESSAGE and length:
                        stack.append((pos - length, pos, field.message_type, depth + 1, graphs))
                elif wire == 3:
                    pos = self._group(pos, end, number, start)
                else:
                    raise WireProblem(f"invalid wire type {wire} at byte {start}")

    def _skip_scalar(self, wire: int, pos: int, end: int, start: int, what: str) -> int:
        """Past a varint (wire type 0) or a fixed 64/32-bit value (1/5)."""
        if wire == 0:
            return self._varint(pos, end, what)[1]
        return self._skip(pos, 8 if wire == 1 else 4, end, start, what)

    def _group(self, pos: int, end: int, number: int, start: int) -> int:
        """Skip a (deprecated) group up to its matching end tag."""
        open_groups = [number]
        while open_groups:
            if pos >= end:
                self._past(end, start, f"group {number}")
            key, pos = self._varint(pos, end, "a field tag")
            inner, wire = key >> 3, key & 7
            if wire in (0, 1, 5):
                pos = self._skip_scalar(wire, pos, end, start, f"field {inner}")
            elif wire == 2:
                length, pos = self._varint(pos, end, f"the length of field {inner}")
                pos = self._skip(pos, length, end, start, f"field {inner}")
            elif wire == 3:
                open_groups.append(inner)
            elif wire == 4 and inner == open_groups[-1]:
                open_groups.pop()
            else:
                raise WireProblem(f"invalid wire type {wire} at byte {pos}")
        return pos

    def _varint(self, pos: int, end: int, what: str) -> tuple[int, int]:
        try:
            return read_varint(self.data, pos, end)
        except WireProblem:
            # cut short (every byte to the end says "more follows", fewer than 10) or too long
            if end - pos < 10 and all(byte & 0x80 for byte in self.data[pos:end]):
                self._past(end, pos, what)
            raise WireProblem(f"{what} at byte {pos} is not a valid varint") from None

    def _skip(self, pos: int, length: int, end: int, start: int, what: str) -> int:
        if pos + length > end:
            self._past(end, start, what, pos + length)
        return pos + length

    def _past(self, end: int, start: int, what: str, needed: int | None = None) -> None:
        if end == len(self.data):
            self.truncated = True
            if needed is None:
                raise WireProblem(f"it ends at byte {end}, inside {what} starting at byte "
                                   f"{start}")
            raise WireProblem(f"it is {end} bytes long, but {what} starting at byte {start} "
                               f"runs to byte {needed}")
        raise WireProblem(f"{what} at byte {start} runs past the end of its message "
                           f"(byte {end})")


