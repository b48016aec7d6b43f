"""A landscape result's arrays in files other tools read: CSV, NumPy .npz, and legacy VTK for ParaView."""

import io
import json
import math
from typing import Any

import numpy as np

FORMATS = {"json": "application/json", "csv": "text/csv", "npz": "application/octet-stream", "vtk": "text/plain"}


def _arrays(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """xs, ys and every per-point array as float 2-D [len(xs), len(ys)] (a curve has len(ys) == 1); null → NaN."""
    xs = np.asarray(data["xs"], dtype=np.float64)
    ys = np.asarray(data["ys"] if data.get("ys") is not None else [0.0], dtype=np.float64)
    out = {"xs": xs, "ys": ys}
    for name in ("loss", "accuracy", "evaluated"):
        if data.get(name) is not None:
            values = np.array(data[name], dtype=np.float64)  # None → nan
            out[name] = values.reshape(len(xs), len(ys))
    return out


def metadata(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("xs", "ys", "loss", "accuracy", "evaluated")}


def to_csv(data: dict[str, Any]) -> str:
    arrays = _arrays(data)
    names = [n for n in ("loss", "accuracy", "evaluated") if n in arrays]
    lines = [",".join(["i", "j", "x", "y", *names])]
    for i, x in enumerate(arrays["xs"]):
        for j, y in enumerate(arrays["ys"]):
            cells = ["" if math.isnan(v := float(arrays[n][i, j])) else repr(v) for n in names]
            lines.append(",".join([str(i), str(j), repr(float(x)), repr(float(y)), *cells]))
    return "\n".join(lines) + "\n"


def to_npz(data: dict[str, Any]) -> bytes:
    """Plain arrays only (np.load needs no allow_pickle); the settings as a JSON string in `metadata`."""
    buffer = io.BytesIO()
    np.savez(buffer, **_arrays(data), metadata=np.array(json.dumps(metadata(data))))
    return buffer.getvalue()


def to_vtk(data: dict[str, Any], title: str) -> str:
    """Legacy VTK STRUCTURED_POINTS (x fastest); in ParaView, "Warp By Scalar" on `loss` gives the 3-D surface."""
    arrays = _arrays(data)
    xs, ys = arrays["xs"], arrays["ys"]
    dx = float(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    dy = float(ys[1] - ys[0]) if len(ys) > 1 else 1.0
    lines = [
        "# vtk DataFile Version 3.0",
        title.replace("\n", " ")[:200],
        "ASCII",
        "DATASET STRUCTURED_POINTS",
        f"DIMENSIONS {len(xs)} {len(ys)} 1",
        f"ORIGIN {float(xs[0])!r} {float(ys[0])!r} 0",
        f"SPACING {dx!r} {dy!r} 1",
        f"POINT_DATA {len(xs) * len(ys)}",
    ]
    for name in ("loss", "accuracy"):
        if name in arrays:
            lines += [f"SCALARS {name} double 1", "LOOKUP_TABLE default"]
            lines += [repr(float(arrays[name][i, j])) for j in range(len(ys)) for i in range(len(xs))]
    return "\n".join(lines) + "\n"
