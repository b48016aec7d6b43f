"""Datasets on the worker's disk, under its data root: image folders, .npy arrays (memory-mapped), MNIST and
CIFAR-10 files as torchvision keeps them (written here, never downloaded), a text file; and every way out of the
root refused."""

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from backend.spec import JobSpec
from tests.conftest import reset_caches, spec
from tests.helpers import run
from worker.training import data
from worker.training.loop import Outcome


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "datasets"
    folder.mkdir()
    monkeypatch.setenv("DYNASCOPE_DATA_DIR", str(folder))
    reset_caches()
    yield folder
    reset_caches()


def load(raw_data: dict, **model: object) -> data.Split:
    job = JobSpec.model_validate({**spec(), "data": raw_data, "model": model or {"kind": "mlp"}})
    return data.load(job.data, 0, 16)


def write_images(folder: Path, classes: dict[str, tuple[int, int, int]], count: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name, colour in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, size=(10, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    (folder / name / "notes.txt").write_text("not an image")


def test_an_image_folder_loads_as_classes_and_trains(root):
    write_images(root / "pets", {"cat": (200, 40, 40), "dog": (40, 40, 200)})
    split = load({"kind": "image_folder", "path": "pets", "size": [8, 6], "val_fraction": 0.25})
    assert split.x_train.shape == (18, 3, 8, 6) and split.x_val.shape == (6, 3, 8, 6) and split.n_classes == 2
    assert abs(float(split.x_train.mean())) < 1e-5  # normalized with the training split's statistics
    red = split.x_train[split.y_train == 0][:, 0].mean() - split.x_train[split.y_train == 0][:, 2].mean()
    assert red > 1  # class 0 is the first folder by name: the red cats
    raw = {**spec(steps=30, lr=0.1), "model": {"kind": "cnn", "channels": [4]}}
    raw["data"] = {"kind": "image_folder", "path": "pets", "size": [8, 8], "grayscale": True}
    outcome, recorder = run(raw)
    assert outcome is Outcome.finished and recorder.series("val/accuracy")[-1] == 1.0


def test_npy_arrays_are_memory_mapped_views_of_the_file(root):
    folder = root / "tables"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "X.npy", rng.normal(size=(1000, 6)).astype(np.float32))
    np.save(folder / "y.npy", rng.integers(0, 3, 1000))
    split = load({"kind": "npy", "path": "tables", "val_fraction": 0.1})
    assert (len(split.x_train), len(split.x_val), split.n_classes) == (900, 100, 3)
    np.testing.assert_array_equal(split.x_val.numpy(), np.load(folder / "X.npy")[900:])  # the last rows, as stored
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(folder / "X.npy"))]
    ranges = [tuple(int(a, 16) for a in m[0].split("-")) for m in maps]
    assert any(lo <= split.x_train.data_ptr() < hi for lo, hi in ranges)  # the tensor lies in the file's mapping
    outcome, _ = run({**spec(steps=20), "data": {"kind": "npy", "path": "tables"}})
    assert outcome is Outcome.finished


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_and_cifar10_files_as_torchvision_keeps_them(root):
    rng = np.random.default_rng(0)
    raw = root / "vision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = rng.integers(0, 256, (60, 28, 28)), np.arange(60) % 10
    _idx(raw / "train-images-idx3-ubyte.gz", images)
    _idx(raw / "train-labels-idx1-ubyte.gz", labels)
    split = load({"kind": "mnist", "path": "vision", "val_fraction": 0.5})
    assert split.x_train.shape == (30, 1, 28, 28) and split.n_classes == 10
    [first] = np.flatnonzero((images == np.round(split.x_train[0, 0].numpy() * 255)).all((1, 2)))
    assert int(split.y_train[0]) == labels[first]  # each image keeps its label
    batches = root / "cifar" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    records = np.concatenate([(np.arange(20) % 10)[:, None], rng.integers(0, 256, (20, 3072))], 1).astype(np.uint8)
    records.tofile(batches / "data_batch_1.bin")
    cifar = load({"kind": "cifar10", "path": "cifar", "max_examples": 16})
    assert len(cifar.x_train) + len(cifar.x_val) == 16 and cifar.x_train.shape[1:] == (3, 32, 32)
    pixel = float(cifar.x_train[0, 2, 31, 31]) * 255
    assert any(round(pixel) == records[i, -1] for i in range(16))
    with pytest.raises(FileNotFoundError, match="no train-images-idx3-ubyte"):
        load({"kind": "fashion_mnist", "path": "cifar"})


def test_a_text_file_trains_the_language_model(root):
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    raw = {**spec(steps=10, lr=0.01), "data": {"kind": "text_file", "path": "corpus.txt"}}
    raw["model"] = {"kind": "transformer", "layers": 1, "heads": 2, "width": 16, "context": 16}
    raw["optimizer"] = {"kind": "adam", "lr": 0.01}
    outcome, recorder = run(raw)
    assert outcome is Outcome.finished and recorder.series("train/loss")[-1] < recorder.series("train/loss")[0]


@pytest.mark.parametrize("path", ["../etc", "/etc/passwd", "pets/../../x", "~root", "C:/x", "a\\..\\..\\b"])
def test_paths_out_of_the_root_are_refused_by_the_spec(path):
    with pytest.raises(ValidationError, match="relative to the worker's data root"):
        JobSpec.model_validate({**spec(), "data": {"kind": "npy", "path": path}})


def test_symlinks_out_of_the_root_and_a_missing_root_are_refused(root, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    write_images(outside, {"a": (0, 0, 0), "b": (255, 255, 255)})
    (root / "escape").symlink_to(outside)
    with pytest.raises(data.OutsideDataRoot, match="leads outside the data root"):
        load({"kind": "image_folder", "path": "escape"})
    write_images(root / "mixed", {"a": (0, 0, 0), "b": (255, 255, 255)})
    (root / "mixed" / "a" / "stolen.png").symlink_to(outside / "a" / "1.png")
    with pytest.raises(data.OutsideDataRoot, match="stolen.png links outside the data root"):
        load({"kind": "image_folder", "path": "mixed"})
    with pytest.raises(FileNotFoundError, match="nothing there"):
        load({"kind": "npy", "path": "absent"})
    monkeypatch.delenv("DYNASCOPE_DATA_DIR")
    reset_caches()
    with pytest.raises(data.OutsideDataRoot, match="sets DYNASCOPE_DATA_DIR"):
        load({"kind": "npy", "path": "mixed"})
