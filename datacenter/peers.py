"""A fleet's shared zoo: the models of the peer states an edge's request names are candidates too.

Which peers count is the edge's (the workflow's) explicit choice, sent as `extra.peers` with the
state check and `prep_retraining` — the other edges' latest states (workflow/rules/common.smk
`peer_checkpoints`) — so the candidates, and the answer, do not depend on timing.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .state import Snapshot, ZooEntry

if TYPE_CHECKING:
    from .service import DataCenter


def with_peer_models(center: DataCenter, snapshot: Snapshot, metadata: dict[str, Any],
                     drafts: bool = True) -> Snapshot:
    """The snapshot with the zoo models (and their own windows) of the named peer states added;
    without this round's `drafts` when `drafts` is False."""
    peers = peer_snapshots(center, metadata)
    if not peers:
        return snapshot
    zoo, references, known = list(snapshot.zoo), dict(snapshot.references), {e.sha256 for e in snapshot.zoo}
    if not drafts:
        known |= draft_models(peers, str(metadata.get("round")))
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


def draft_models(peers: list[Snapshot], round_id: str) -> set[str]:
    """Models a peer's episode of this same round trained on that edge's own labels alone, and
    no other peer has taken on since: a group's first draft, not to be adopted without a label.

    One edge's few labels trained and validated a draft. Recognised label-free by the rest of
    its group, it would serve them all for good (fleet bench, seed 1: four edges at 0.90 held out,
    where each edge training alone reached 0.93-0.95). Left out, the group's next edge tests it
    on labels of its own and trains on from it with the pooled labels (prepare.pooled_rows); that
    model — or a draft another edge adopted after its harm test — is then recognised as usual.
    """
    drafts, taken = set(), set()
    for other in peers:
        episode, data = other.episode, other.data
        own = {e.sha256 for e in other.zoo if e.episode == episode.id} if episode is not None else set()
        if own and episode.round == round_id and data is not None and data.pooled == 0:
            drafts |= own
        if other.current not in own:
            taken.add(other.current)
    return drafts - taken


def from_peer(entry: ZooEntry, metadata: dict[str, Any]) -> bool:
    """Whether `entry` was trained on another edge's labels than the requesting one's."""
    return entry.edge not in (None, metadata.get("edge_id"))
