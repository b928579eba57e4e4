"""A fleet's shared zoo: the models of the peer states an edge's request names are candidates too.

Which peers count is the edge's (the workflow's) explicit choice, sent as `extra.peers` with the
state check and `prep_retraining` — the other edges' latest states (workflow/rules/common.smk
`peer_checkpoints`) — so the candidates, and the answer, do not depend on timing.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .state import Snapshot

if TYPE_CHECKING:
    from .service import DataCenter


def with_peer_models(center: DataCenter, snapshot: Snapshot, metadata: dict[str, Any]) -> Snapshot:
    """The snapshot with the zoo models (and their own windows) of the named peer states added."""
    peers = peer_snapshots(center, metadata)
    if not peers:
        return snapshot
    zoo, references, known = list(snapshot.zoo), dict(snapshot.references), {e.sha256 for e in snapshot.zoo}
    for other in peers:
        for entry in other.zoo:
            if entry.sha256 not in known and entry.sha256 in other.references:
                zoo.append(entry)
                references[entry.sha256] = other.references[entry.sha256]
                known.add(entry.sha256)
    return dataclasses.replace(snapshot, zoo=tuple(zoo), references=references)


def peer_snapshots(center: DataCenter, metadata: dict[str, Any]) -> list[Snapshot]:
    """The states the request names as peers (`extra.peers`, comma-separated keys), in order."""
    raw = str(metadata.get("peers") or "")
    return [center.parent_state({"state": key})[1] for key in raw.split(",") if key]
