"""Sample-frame schema, settings validation, checkpoint integrity and determinism."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from mlcore.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from mlcore.datasets import DatasetError, load_table_dataset, read_idx, split_dataset
from mlcore.frames import FrameError, build_sample_frame, frame_digest, frame_features, frame_labels, validate_sample_frame
from mlcore.models import ModelSpec, build_model
from mlcore.settings import SettingsError, load_settings, settings_from_dict
from mlcore.training import accuracy, train_model


def test_frame_schema_round_trip():
    images = np.arange(24, dtype=np.float32).reshape(3, 2, 4) / 24
    frame = build_sample_frame(np.array([5, 9, 2]), images, np.array([1, -1, 0]), "r01", "none",
                               pred=np.array([1, 1, 0]), confidence=np.array([0.5, 0.6, 0.7]))
    validate_sample_frame(frame, n_features=8)
    assert frame["id"].dtype == np.int64 and str(frame["label"].dtype) == "Int64"
    assert frame["label"].isna().tolist() == [False, True, False]
    assert frame["x"].iloc[0].dtype == np.float32 and frame["x"].iloc[0].shape == (8,)
    assert np.array_equal(frame_features(frame), images.reshape(3, 8))
    assert frame_labels(frame).tolist() == [1, -1, 0]
    assert frame["pred"].dtype == np.int64 and frame["confidence"].dtype == np.float32


def test_frame_errors_are_clear():
    frame = build_sample_frame(np.array([1, 2]), np.zeros((2, 2, 2)), None, "r01", "none")
    with pytest.raises(FrameError, match="8 features"):
        validate_sample_frame(frame, n_features=8)
    with pytest.raises(FrameError, match="needs a label"):
        validate_sample_frame(frame, labelled=True)
    with pytest.raises(FrameError, match="missing column"):
        validate_sample_frame(frame.drop(columns=["round"]))
    bad = frame.copy()
    bad["x"] = [np.zeros(4, dtype=np.float64), np.zeros(4, dtype=np.float64)]
    with pytest.raises(FrameError, match="float32"):
        validate_sample_frame(bad)
    with pytest.raises(FrameError, match="unique"):
        validate_sample_frame(pd.concat([frame, frame]))


def test_frame_digest_follows_content():
    images = np.random.default_rng(0).random((4, 2, 2))
    a = build_sample_frame(np.arange(4), images, None, "r01", "none")
    b = build_sample_frame(np.arange(4), images, None, "r09", "other")
    c = build_sample_frame(np.arange(4), images, np.array([0, 1, 0, 1]), "r01", "none")
    assert frame_digest(a) == frame_digest(b) != frame_digest(c)


def test_settings_defaults_and_errors(tmp_path):
    defaults = settings_from_dict({})
    assert defaults.edge.strategy == "margin" and defaults.datacenter.detector == "ks" and defaults.datacenter.alpha == 0.01
    file = tmp_path / "config.yaml"
    file.write_text("seed: 3\nworkflow_only_key: 1\nedge: {query_size: 5}\ndatacenter: {finetune: {replay: 50}}\n")
    loaded = load_settings(file)
    assert loaded.seed == 3 and loaded.edge.query_size == 5 and loaded.datacenter.finetune.replay == 50
    for raw, field in [
        ({"edge": {"strategy": "random"}}, "edge.strategy"),
        ({"edge": {"query_size": 0}}, "edge.query_size"),
        ({"edge": {"qurey_size": 3}}, r"edge: unknown key"),
        ({"datacenter": {"alpha": "low"}}, "datacenter.alpha"),
        ({"datacenter": {"finetune": {"epochs": 1.5}}}, "datacenter.finetune.epochs"),
        ({"seed": True}, "seed"),
        ({"dataset": {"name": "table"}}, "dataset.path"),
        ({"zoo": {"seed_shifts": [[{"name": "spin"}]]}}, r"zoo.seed_shifts\[0\]"),
    ]:
        with pytest.raises(SettingsError if "seed_shifts" not in field else ValueError, match=field):
            settings_from_dict(raw)
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def _small_model(digits, splits, seed):
    spec = ModelSpec("mlp", digits.image_shape, digits.n_classes)
    model = build_model(spec, seed)
    rows = splits.source_train[:200]
    train_model(model, digits.images[rows], digits.labels[rows], epochs=3, lr=0.003, batch_size=32, seed=seed)
    return model, spec


def test_same_seed_same_checkpoint_bytes(tmp_path, digits, splits):
    a, spec = _small_model(digits, splits, 7)
    b, _ = _small_model(digits, splits, 7)
    c, _ = _small_model(digits, splits, 8)
    path_a, sha_a = save_checkpoint(a, spec, tmp_path / "a")
    path_b, sha_b = save_checkpoint(b, spec, tmp_path / "b")
    _, sha_c = save_checkpoint(c, spec, tmp_path / "c")
    assert path_a.read_bytes() == path_b.read_bytes() and sha_a == sha_b != sha_c
    assert hashlib.sha256(path_a.read_bytes()).hexdigest() == sha_a and path_a.name == f"{sha_a}.pt"
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_checkpoint_is_verified_before_loading(tmp_path, digits, splits):
    model, spec = _small_model(digits, splits, 1)
    path, sha = save_checkpoint(model, spec, tmp_path)
    loaded, loaded_spec = load_checkpoint(path, sha)
    assert loaded_spec == spec
    rows = splits.evaluation
    assert accuracy(loaded, digits.images[rows], digits.labels[rows]) == accuracy(model, digits.images[rows], digits.labels[rows])
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, "0" * 64)
    tampered = bytearray(path.read_bytes())
    tampered[-30] ^= 0xFF
    path.write_bytes(bytes(tampered))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, sha)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt", sha)


def test_strict_loading_refuses_foreign_weights(tmp_path):
    import io
    buffer = io.BytesIO()
    torch.save({"format": "driftloop-checkpoint-1", "spec": {"arch": "mlp", "image_shape": [8, 8], "n_classes": 10},
                "state_dict": {"body.1.weight": torch.zeros(3, 3)}}, buffer)
    file = tmp_path / "foreign.pt"
    file.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="Missing key"):
        load_checkpoint(file, hashlib.sha256(buffer.getvalue()).hexdigest())


def test_user_table_and_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.integers(0, 16, size=(40, 16)), columns=[f"p{i}" for i in range(16)])
    frame["label"] = np.arange(40) % 4
    frame.to_csv(tmp_path / "samples.csv", index=False)
    data = load_table_dataset(tmp_path / "samples.csv")
    assert data.images.shape == (40, 4, 4) and data.n_classes == 4 and data.images.max() <= 1.0
    frame["label"] = np.arange(40) % 4 + 1
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetError, match="0..k-1"):
        load_table_dataset(tmp_path / "bad.csv")
    idx = bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    assert read_idx(idx).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DatasetError, match="size mismatch"):
        read_idx(idx[:-1])


def test_splits_are_disjoint_and_seeded(digits, settings):
    a = split_dataset(digits, settings.dataset, 0)
    b = split_dataset(digits, settings.dataset, 0)
    parts = [a.source_train, a.reference, a.stream, a.evaluation]
    assert sum(len(p) for p in parts) == len(digits.labels)
    assert len(np.unique(np.concatenate(parts))) == len(digits.labels)
    assert all(np.array_equal(x, y) for x, y in zip(parts, [b.source_train, b.reference, b.stream, b.evaluation]))
    assert not np.array_equal(split_dataset(digits, settings.dataset, 1).stream, a.stream)
