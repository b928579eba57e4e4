"""Lineage-keyed, immutable data-center state: snapshots on disk, never mutated in place.

A snapshot (zoo, current model, reference windows, episode) lives in
`<state_dir>/states/<key>.json` + `<key>.npz`; its key is the sha256 of (parent key, round,
message, request digest), so the same request on the same parent gives the same child, a
restarted server reads the same files, and editing round k leaves rounds before k untouched.
Arrays are stored without pickle; the .npz has fixed zip timestamps, so equal states give
equal bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlcore.atomic import write_bytes_atomic, write_json_atomic

KEY = re.compile(r"^[0-9a-f]{64}$")
STATE_VERSION = 2


class StateError(ValueError):
    """A state key is malformed or unknown, or a snapshot is damaged."""


@dataclass(frozen=True)
class ZooEntry:
    """One model the data center can start from: the base, a zoo seed, or an adapted model."""

    sha256: str
    round: str | None
    parent: str | None
    episode: str | None  # the episode that produced it (None for base and seed models)
    shift: str
    labels_used: int
    edge: str | None = None  # the edge whose labels trained it (None: base, seeds, a re-weighting)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Episode:
    """The retraining in progress: its start model, how far it went and what it spent."""

    id: str
    round: str
    start: str
    iterations: int = 0
    labels_used: int = 0
    best: str | None = None  # the model that does best on the held-back labels so far (None: start)
    shift: str = ""  # the round's shift tag (from the random sample), for the registry and the zoo

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EpisodeData:
    """What an open episode has seen: the post-shift random sample, the uniformly drawn labels
    held back from training (they validate), and the labels it trains on (the other uniform
    ones, then the actively queried ones).

    The random sample is never an active-learning candidate, so a reference window built on it
    is an unbiased sample of the new data.

    `pool_*`: labelled rows another edge's episode of the same round trained on, when this
    episode starts from the model it made (one drift, one group training: prepare.pooled_rows).
    They train, but are not this edge's labels: not counted, never validated on.
    """

    post_x: np.ndarray  # (n, features) float32, the random sample
    post_ids: np.ndarray  # (n,) int64
    val_x: np.ndarray  # (v, features) float32, uniform labelled rows of the random sample
    val_y: np.ndarray  # (v,) int64
    x: np.ndarray  # (m, features) float32, training rows (uniform, then queried)
    y: np.ndarray  # (m,) int64
    ids: np.ndarray  # (m,) int64
    pool_x: np.ndarray | None = None  # (p, features) float32, another edge's training rows
    pool_y: np.ndarray | None = None  # (p,) int64
    pool_ids: np.ndarray | None = None  # (p,) int64

    def with_labels(self, x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> "EpisodeData":
        return dataclasses.replace(self, x=np.concatenate([self.x, x]), y=np.concatenate([self.y, y]),
                                   ids=np.concatenate([self.ids, ids]))

    @property
    def pooled(self) -> int:
        return 0 if self.pool_y is None else len(self.pool_y)

    def training_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, labels, ids) to train on: the pooled rows first, then this episode's own."""
        if self.pool_y is None:
            return self.x, self.y, self.ids
        return (np.concatenate([self.pool_x, self.x]), np.concatenate([self.pool_y, self.y]),
                np.concatenate([self.pool_ids, self.ids]))


_POOL_ARRAYS = ("pool_x", "pool_y", "pool_ids")  # present only when the episode pooled another edge's rows
_EPISODE_ARRAYS = {"post_x": "post_x", "post_ids": "post_ids", "val_x": "val_x", "val_y": "val_y",
                   "x": "episode_x", "y": "episode_y", "ids": "episode_ids"}


@dataclass(frozen=True)
class Snapshot:
    parent: str | None
    round: str | None
    message: str
    current: str
    zoo: tuple[ZooEntry, ...]
    episode: Episode | None = None
    references: dict[str, np.ndarray] = field(default_factory=dict)  # zoo sha256 -> its softmax window
    monitor_ref: np.ndarray | None = None  # a window adopted when a flagged shift was harmless
    data: EpisodeData | None = None  # the open episode's samples
    adopted_statistic: float | None = None  # KS distance to the model's own window when monitor_ref was adopted
    unconfirmed: bool = False  # monitor_ref came from a harm test's benign call not yet confirmed (check.monitor)

    def reference(self, sha: str) -> np.ndarray:
        """A zoo model's own in-distribution window (used by label-free selection)."""
        return self.references[sha]

    def monitor_reference(self) -> np.ndarray:
        """What the drift check compares against: the current model's window, or the window
        adopted when a flagged shift turned out harmless (`monitor_ref`)."""
        return self.monitor_ref if self.monitor_ref is not None else self.references[self.current]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The flat, named arrays stored in the snapshot's .npz file."""
        out = {f"ref:{sha}": window for sha, window in self.references.items()}
        if self.monitor_ref is not None:
            out["monitor_ref"] = self.monitor_ref
        if self.data is not None:
            out.update({name: getattr(self.data, attr) for attr, name in _EPISODE_ARRAYS.items()})
            if self.data.pool_y is not None:
                out.update({name: getattr(self.data, name) for name in _POOL_ARRAYS})
        return out

    @staticmethod
    def typed_arrays(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """The flat arrays of a .npz file back into `references`, `monitor_ref` and `data`."""
        references = {name[4:]: value for name, value in arrays.items() if name.startswith("ref:")}
        names = set(_EPISODE_ARRAYS.values())
        pool = {name: arrays[name] for name in _POOL_ARRAYS if name in arrays}
        data = EpisodeData(**{attr: arrays[name] for attr, name in _EPISODE_ARRAYS.items()}, **pool) \
            if names <= set(arrays) else None
        return {"references": references, "monitor_ref": arrays.get("monitor_ref"), "data": data}

    def entry(self, sha: str) -> ZooEntry:
        for entry in self.zoo:
            if entry.sha256 == sha:
                return entry
        raise StateError(f"model {sha} is not in the zoo of this state")

    def metadata(self) -> dict:
        return {
            "version": STATE_VERSION,
            "parent": self.parent,
            "round": self.round,
            "message": self.message,
            "current": self.current,
            "zoo": [e.to_dict() for e in self.zoo],
            "episode": self.episode.to_dict() if self.episode else None,
            "adopted_statistic": self.adopted_statistic,
            "unconfirmed": self.unconfirmed,
            "arrays": sorted(self.arrays),
        }


def state_key(parent: str | None, round_id: str | None, message: str, digest: str) -> str:
    text = json.dumps({"parent": parent, "round": round_id, "message": message, "inputs": digest}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


class StateStore:
    """Reads and writes snapshots under a state directory; a small memory cache in front."""

    def __init__(self, state_dir: str | Path, cache_size: int = 32) -> None:
        self.root = Path(state_dir)
        self.states = self.root / "states"
        self.checkpoints = self.root / "checkpoints"
        self.registry = self.root / "registry"
        self._cache: dict[str, Snapshot] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()  # handshakes may read while a request thread writes

    def checkpoint_path(self, sha: str) -> Path:
        return self.checkpoints / f"{sha}.pt"

    def exists(self, key: str) -> bool:
        return bool(KEY.match(key)) and (self.states / f"{key}.json").is_file()

    def save(self, key: str, snapshot: Snapshot) -> str:
        """Write arrays first and the JSON last: a snapshot whose JSON exists is complete."""
        if not KEY.match(key):
            raise StateError(f"state key must be 64 hex digits, got {key!r}")
        if not self.exists(key):
            write_bytes_atomic(self.states / f"{key}.npz", _npz_bytes(snapshot.arrays))
            write_json_atomic(self.states / f"{key}.json", snapshot.metadata())
        self._remember(key, snapshot)
        return key

    def load(self, key: object) -> Snapshot:
        if not isinstance(key, str) or not KEY.match(key):
            raise StateError(f"state key must be 64 hex digits, got {key!r}")
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        meta_file = self.states / f"{key}.json"
        if not meta_file.is_file():
            raise StateError(f"unknown state {key}: no {meta_file} (was base training run with this --state-dir?)")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            with np.load(self.states / f"{key}.npz", allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise StateError(f"state {key} is damaged: {exc}") from exc
        if meta.get("version") != STATE_VERSION or sorted(arrays) != meta.get("arrays"):
            raise StateError(f"state {key}: unexpected version or array list")
        snapshot = Snapshot(
            parent=meta["parent"],
            round=meta["round"],
            message=meta["message"],
            current=meta["current"],
            zoo=tuple(ZooEntry(**e) for e in meta["zoo"]),
            episode=Episode(**meta["episode"]) if meta["episode"] else None,
            adopted_statistic=meta.get("adopted_statistic"),
            unconfirmed=bool(meta.get("unconfirmed", False)),
            **Snapshot.typed_arrays(arrays),
        )
        self._remember(key, snapshot)
        return snapshot

    def write_registry_entry(self, sha: str, entry: dict[str, Any]) -> Path:
        """The checkpoint's registry record (parent, round, labels used, sha256, metrics)."""
        path = self.registry / f"{sha}.json"
        write_json_atomic(path, {**entry, "sha256": sha, "path": str(self.checkpoint_path(sha))})
        return path

    def _remember(self, key: str, snapshot: Snapshot) -> None:
        with self._lock:
            self._cache[key] = snapshot
            while len(self._cache) > self._cache_size:
                self._cache.pop(next(iter(self._cache)))
