"""The Open Inference Protocol (KServe v2) wire format: JSON tensors in, NumPy out, and back.

Every check a client can fail lives here and raises ApiError with a 4xx status and a message that
names the model, the input and what was expected, so a bad request never reaches the backend and
never turns into a 500.
"""
from __future__ import annotations

import math

import numpy as np

# what we accept on the wire; UINT8 pixels are scaled by the model's input_scale, FP32 is taken as
# already scaled (the same rule as Session.probabilities)
DATATYPES = ("UINT8", "FP32")


class ApiError(Exception):
    """A request the server refuses: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def model_metadata(name: str, session) -> dict:
    """GET /v2/models/{name}: the protocol's metadata object, plus what runs in `parameters`."""
    return {
        "name": name,
        "versions": ["1"],
        "platform": f"cnnrt_{session.backend}",
        "inputs": [t.as_dict() for t in session.inputs],
        "outputs": [t.as_dict() for t in session.outputs],
        "parameters": {"backend": session.backend, "precision": session.precision,
                       "input_scale": session.input_scale, "labels": session.labels,
                       "accepted_datatypes": list(DATATYPES), "source": session.path},
    }


def _input_shape(name: str, session, inp_name: str, shape) -> tuple[int, ...]:
    h, w, c = session.input_shape
    want = f"[N, {h}, {w}, {c}]" + (f" or [N, {h}, {w}]" if c == 1 else "")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise ApiError(400, f"model '{name}', input '{inp_name}': 'shape' must be a list of whole numbers "
                            f"like {want}, got {shape!r}")
    ok = (len(shape) == 4 and tuple(shape[1:]) == (h, w, c)) or (c == 1 and len(shape) == 3 and tuple(shape[1:]) == (h, w))
    if not ok:
        raise ApiError(400, f"model '{name}', input '{inp_name}': shape {_shape_text(shape)} does not fit the "
                            f"model; expected {want}")
    if shape[0] < 1:
        raise ApiError(400, f"model '{name}', input '{inp_name}': shape {_shape_text(shape)} holds no images; "
                            f"N must be at least 1")
    return tuple(shape)


def _values(name: str, inp_name: str, data, shape: tuple[int, ...]) -> np.ndarray:
    """`data` as a NumPy array of numbers in `shape`: flat (row-major) or nested as the shape says."""
    where = f"model '{name}', input '{inp_name}'"
    if not isinstance(data, list):
        raise ApiError(400, f"{where}: 'data' must be a list of numbers (flat, or nested as the shape), "
                            f"got {type(data).__name__}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, f"{where}: 'data' is not a regular array of numbers (ragged nested lists?)") from None
    if arr.dtype.kind not in "iuf":
        what = {"b": "true/false values", "U": "strings", "O": "values that are not numbers, "
                "numbers too large, or ragged nested lists"}.get(arr.dtype.kind, f"dtype {arr.dtype}")
        raise ApiError(400, f"{where}: 'data' must hold numbers only; it holds {what}")
    need = math.prod(shape)
    if arr.ndim == 1 and arr.size == need:
        return arr.reshape(shape)
    if arr.shape == shape:
        return arr
    if arr.ndim == 1:
        raise ApiError(400, f"{where}: 'data' holds {arr.size} values; shape {_shape_text(shape)} needs {need}")
    raise ApiError(400, f"{where}: 'data' is nested as {_shape_text(arr.shape)}; expected {_shape_text(shape)} "
                        f"or a flat list of {need} values")


def _first_bad(mask: np.ndarray, arr: np.ndarray) -> str:
    i = int(np.flatnonzero(mask.ravel())[0])
    return f"{arr.ravel()[i].item()!r} at flat index {i}"


def decode_request(name: str, session, payload) -> tuple[np.ndarray, list[str], object]:
    """An infer request body -> (images (N, H, W, C) uint8 or float32, outputs to return, request id)."""
    if not isinstance(payload, dict):
        raise ApiError(400, f"model '{name}': the request must be a JSON object with 'inputs', "
                            f"got {type(payload).__name__}")
    inputs = payload.get("inputs")
    expected = [t.name for t in session.inputs]
    if not isinstance(inputs, list) or len(inputs) != len(expected) or not all(isinstance(i, dict) for i in inputs):
        raise ApiError(400, f"model '{name}': 'inputs' must be a list of {len(expected)} tensor object(s) "
                            f"(name, shape, datatype, data) for {expected}")
    inp = inputs[0]
    inp_name = inp.get("name")
    if inp_name != expected[0]:
        raise ApiError(400, f"model '{name}': unknown input {inp_name!r}; the model takes '{expected[0]}'")
    if isinstance(inp.get("parameters"), dict) and "binary_data_size" in inp["parameters"]:
        raise ApiError(400, f"model '{name}', input '{inp_name}': the binary tensor extension is not "
                            f"supported; send 'data' as JSON")
    datatype = inp.get("datatype")
    if datatype not in DATATYPES:
        raise ApiError(400, f"model '{name}', input '{inp_name}': datatype {datatype!r} is not supported; "
                            f"send UINT8 (pixels 0-255) or FP32 (pixels already multiplied by the input "
                            f"scale {session.input_scale:.6g})")
    shape = _input_shape(name, session, inp_name, inp.get("shape"))
    if "data" not in inp:
        raise ApiError(400, f"model '{name}', input '{inp_name}': 'data' is missing")
    arr = _values(name, inp_name, inp["data"], shape)
    where = f"model '{name}', input '{inp_name}'"
    if datatype == "UINT8":
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.floor(arr)) | (arr < 0) | (arr > 255)
        else:
            bad = (arr < 0) | (arr > 255)
        if bad.any():
            raise ApiError(400, f"{where}: UINT8 data must be whole numbers from 0 to 255; found {_first_bad(bad, arr)}")
        x = arr.astype(np.uint8)
    else:
        with np.errstate(over="ignore"):
            x = arr.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            raise ApiError(400, f"{where}: FP32 data holds NaN or Inf (or a value too large for float32): "
                                f"{_first_bad(bad, arr)}")
    if x.ndim == 3:
        x = x[..., None]
    return x, _requested_outputs(name, session, payload.get("outputs")), payload.get("id")


def _requested_outputs(name: str, session, outputs) -> list[str]:
    known = [t.name for t in session.outputs]
    if outputs is None:
        return known
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ApiError(400, f"model '{name}': 'outputs' must be a list of objects like {{\"name\": \"label\"}}")
    names = [o.get("name") for o in outputs]
    for n in names:
        if n not in known:
            raise ApiError(400, f"model '{name}': unknown output {n!r}; the model gives {known}")
    return names


def encode_response(name: str, probabilities: np.ndarray, outputs: list[str], request_id, parameters: dict) -> dict:
    """The infer response: probabilities [N, classes] FP32 and label [N] INT64, flat row-major data."""
    tensors = {
        "probabilities": {"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP32",
                          "data": probabilities.ravel().tolist()},
        "label": {"name": "label", "shape": [len(probabilities)], "datatype": "INT64",
                  "data": probabilities.argmax(axis=1).tolist()},
    }
    body = {"model_name": name, "model_version": "1", "outputs": [tensors[o] for o in outputs],
            "parameters": parameters}
    if request_id is not None:
        body["id"] = request_id
    return body
