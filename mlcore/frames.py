"""The sample frame: one DataFrame row per sample, all the data center ever needs from the edge.

Columns (see docs/learning.md):
- `id` int64: stable sample id (row index in the dataset)
- `x` object column, one float32 1-D numpy array per row (the flattened image, values in [0, 1])
- `label` pandas Int64, <NA> when unlabelled
- `round` str round id, `shift` str shift tag
- optional on edge outputs: `pred` int64, `confidence` float32
"""

from __future__ import annotations

import hashlib
import operator

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("id", "x", "label", "round", "shift")


class FrameError(ValueError):
    """A sample frame breaks the schema; the message says which column and why."""


def build_sample_frame(
    ids: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray | None,
    round_id: str,
    shift: str,
    *,
    pred: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
) -> pd.DataFrame:
    """Labels None -> all <NA>; otherwise int labels with negative values meaning unlabelled.

    The `x` cells are the consecutive rows of one fresh C-contiguous float32 matrix (views,
    each a writable 1-D array of its own), as the protocol decodes them: one allocation
    and one copy of the images instead of one a row."""
    n = len(ids)
    matrix = np.array(np.reshape(images, (n, -1)), dtype=np.float32, order="C", copy=True)
    cells = np.empty(n, dtype=object)
    cells[:] = list(matrix)
    if labels is None:
        label = pd.arrays.IntegerArray(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool))
    else:
        values = np.array(labels, dtype=np.int64)
        label = pd.arrays.IntegerArray(values, values < 0)
    tags = np.empty((2, n), dtype=object)  # object, not pandas' inferred str dtype: the schema says str objects
    tags[0], tags[1] = round_id, shift
    frame = pd.DataFrame({
        "id": np.asarray(ids, dtype=np.int64),
        "x": pd.Series(cells, dtype=object, copy=False),
        "label": label,
        "round": pd.Series(tags[0], dtype=object, copy=False),
        "shift": pd.Series(tags[1], dtype=object, copy=False),
    }, copy=False)
    if pred is not None:
        frame["pred"] = np.asarray(pred, dtype=np.int64)
    if confidence is not None:
        frame["confidence"] = np.asarray(confidence, dtype=np.float32)
    return frame


def validate_sample_frame(frame: object, *, n_features: int | None = None, labelled: bool = False, name: str = "frame") -> pd.DataFrame:
    """Check the schema; `labelled=True` also demands a label on every row."""
    if not isinstance(frame, pd.DataFrame):
        raise FrameError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise FrameError(f"{name}: missing column(s) {missing}; a sample frame has {list(REQUIRED_COLUMNS)}")
    if len(frame) == 0:
        raise FrameError(f"{name}: has no rows")
    if not pd.api.types.is_integer_dtype(frame["id"].dtype):
        raise FrameError(f"{name}.id: must be integer, got {frame['id'].dtype}")
    if frame["id"].duplicated().any():
        raise FrameError(f"{name}.id: ids must be unique within a frame")
    lengths = set()
    for value in frame["x"]:
        if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype != np.float32:
            raise FrameError(f"{name}.x: every row must be a 1-D float32 numpy array, got {type(value).__name__}")
        lengths.add(value.shape[0])
    if len(lengths) != 1:
        raise FrameError(f"{name}.x: all rows must have the same length, got {sorted(lengths)}")
    if n_features is not None and lengths != {n_features}:
        raise FrameError(f"{name}.x: rows must have {n_features} features (the model's input), got {lengths.pop()}")
    if not pd.api.types.is_integer_dtype(frame["label"].dtype):
        raise FrameError(f"{name}.label: must be an integer column (Int64 with <NA>), got {frame['label'].dtype}")
    if labelled and frame["label"].isna().any():
        raise FrameError(f"{name}.label: every row needs a label here, {int(frame['label'].isna().sum())} are <NA>")
    return frame


_SHAPE = operator.attrgetter("shape")


def frame_features(frame: pd.DataFrame) -> np.ndarray:
    """The `x` column as a fresh (n, d) float32 array.

    One C loop over the rows (`np.concatenate`) when every cell is a 1-D numpy array of one
    length, the common case; `np.stack` (which builds a 2-D view of every row first, about
    3x the cost) for anything else, with its own errors. Handing back the block the cells
    are views of, without a copy, was measured and is slower: proving that the cells are
    the block's consecutive rows takes each cell's data address, 0.3 us a cell at best
    (pyarrow), against 0.14 us a row for the copy (benchmarks/results/protocol.md)."""
    cells = frame["x"].to_numpy()
    rows = cells.tolist()
    shapes = set(map(_SHAPE, rows)) if rows and set(map(type, rows)) == {np.ndarray} else set()
    if len(shapes) == 1 and len(next(iter(shapes))) == 1:
        matrix = np.concatenate(rows).reshape(len(rows), next(iter(shapes))[0]).astype(np.float32, copy=False)
    else:
        matrix = np.stack(list(cells)).astype(np.float32, copy=False)
    if not np.isfinite(matrix).all():
        raise FrameError("frame.x: contains NaN or infinity")
    return matrix


def frame_labels(frame: pd.DataFrame) -> np.ndarray:
    """Labels as int64 with -1 for <NA>."""
    return frame["label"].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)


def frame_digest(frame: pd.DataFrame | None) -> str:
    """sha256 over ids, features and labels: equal content, equal digest (used in state keys)."""
    if frame is None:
        return "none"
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(frame["id"].to_numpy(dtype=np.int64)).tobytes())
    digest.update(np.ascontiguousarray(frame_features(frame)).tobytes())
    digest.update(np.ascontiguousarray(frame_labels(frame)).tobytes())
    return digest.hexdigest()
