"""Landscape exports read back by the readers other tools use: csv, numpy (no pickle), VTK's layout."""

import csv
import io
import json

import numpy as np

from backend.services import landscape_export

SURFACE = {
    "xs": [-1.0, 0.0, 1.0],
    "ys": [-0.5, 0.0, 0.5],
    "loss": [[1.0, 2.0, 3.0], [4.0, None, 6.0], [7.0, 8.0, 9.0]],
    "accuracy": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]],
    "seed": 7,
    "indexing": "loss[i][j] = L(θ + xs[i]·d1 + ys[j]·d2)",
}


def test_csv_has_one_row_per_point_with_gaps_empty():
    rows = list(csv.DictReader(io.StringIO(landscape_export.to_csv(SURFACE))))
    assert len(rows) == 9
    assert rows[5] == {"i": "1", "j": "2", "x": "0.0", "y": "0.5", "loss": "6.0", "accuracy": "0.6"}
    assert rows[4]["loss"] == ""


def test_npz_loads_without_pickle_and_keeps_the_indexing():
    data = np.load(io.BytesIO(landscape_export.to_npz(SURFACE)), allow_pickle=False)
    assert data["loss"].shape == (3, 3) and data["loss"][0, 2] == 3.0 and np.isnan(data["loss"][1, 1])
    assert data["ys"].tolist() == [-0.5, 0.0, 0.5]
    assert json.loads(str(data["metadata"]))["seed"] == 7


def test_vtk_structured_points_run_x_fastest():
    text = landscape_export.to_vtk(SURFACE, "t").splitlines()
    assert "DIMENSIONS 3 3 1" in text and "SPACING 1.0 0.5 1" in text and "ORIGIN -1.0 -0.5 0" in text
    start = text.index("SCALARS loss double 1") + 2
    assert [float(v) for v in text[start : start + 3]] == [1.0, 4.0, 7.0]  # j = 0, i = 0..2


def test_curve_exports_as_one_column():
    curve = {"xs": [0.0, 0.5, 1.0], "ys": None, "loss": [1.0, 0.5, 2.0], "accuracy": None}
    data = np.load(io.BytesIO(landscape_export.to_npz(curve)), allow_pickle=False)
    assert data["loss"].shape == (3, 1) and "accuracy" not in data
    assert "DIMENSIONS 3 1 1" in landscape_export.to_vtk(curve, "c")
