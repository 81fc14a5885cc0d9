"""Find every external-data location an ONNX file names, without the onnx package (the agent stays small).

A model larger than 2 GB keeps tensors in side files named by ``external_data`` entries; ONNX Runtime opens
whatever path is written there. A signed package must not make a device read outside its own directory,
so the verifier walks the protobuf structure (only the fields that can hold tensors) and checks each path.
Field numbers are those of onnx/onnx.proto (IR version 3 and later).
"""

from __future__ import annotations

from collections.abc import Iterator

# message -> {field number: message type of that (length-delimited) field}
_SCHEMA: dict[str, dict[int, str]] = {
    "Model": {7: "Graph", 20: "TrainingInfo", 25: "Function"},
    "TrainingInfo": {1: "Graph", 2: "Graph"},
    "Graph": {1: "Node", 5: "Tensor", 15: "SparseTensor"},
    "Function": {7: "Node", 11: "Attribute"},
    "Node": {5: "Attribute"},
    "Attribute": {5: "Tensor", 6: "Graph", 10: "Tensor", 11: "Graph", 22: "SparseTensor", 23: "SparseTensor"},
    "SparseTensor": {1: "Tensor", 2: "Tensor"},
    "Tensor": {13: "Entry"},
    "Entry": {},
}
_MAX_DEPTH = 64


class OnnxFormatError(ValueError):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxFormatError("bad varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value or payload start, payload end) for one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 1:
            pos += 8
            yield number, wire, 0, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise OnnxFormatError("field runs past the end")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            pos += 4
            yield number, wire, 0, pos
        else:
            raise OnnxFormatError(f"unsupported wire type {wire}")
    if pos != end:
        raise OnnxFormatError("message runs past the end")


def external_locations(data: bytes | memoryview) -> list[str]:
    """Every ``location`` value of every tensor's external_data, anywhere in the model."""
    buf = memoryview(data)
    found: list[str] = []
    stack: list[tuple[str, int, int, int]] = [("Model", 0, len(buf), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise OnnxFormatError("graph nesting too deep")
        children = _SCHEMA[kind]
        key = value = None
        for number, wire, a, b in _fields(buf, start, end):
            if kind == "Entry" and wire == 2 and number in (1, 2):
                text = bytes(buf[a:b]).decode("utf-8", "replace")
                key, value = (text, value) if number == 1 else (key, text)
            elif wire == 2 and number in children:
                stack.append((children[number], a, b, depth + 1))
        if kind == "Entry" and key == "location":
            found.append(value or "")
    return found
