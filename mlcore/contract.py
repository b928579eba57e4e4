"""The contract between edge and data center: the messages, what travels with them, one reply shape.

Edge and data center both import this module and neither owns it. It imports neither
torch nor the protocol: the edge reaches the data center through an `Exchange`, with two
adapters — `in_process` (tests, benchmarks: a direct call) and the protocol client (the
edge's command line). Which labels each step needs is announced by the data center in
its handshake (`LabelNeeds`), so the edge never reads the data center's policy; the
budget rule both sides apply is `may_query`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import pandas as pd


class Message(str, enum.Enum):
    """What the edge asks (the wire names of the original design)."""

    HANDSHAKE = "handshake"  # who are you; send me checkpoint `fetch` if I lack it
    CHECK = "normal"  # is the model still fit for this random sample?
    PREPARE = "prep_retraining"  # open an episode: the best starting checkpoint of the zoo
    RETRAIN = "retraining"  # fine-tune on these queried labels; the new checkpoint


class Decision(str, enum.Enum):
    """What a round did about its data, recorded in its metrics and the summary."""

    STABLE = "stable"  # the label-free gate saw nothing
    BENIGN = "benign"  # flagged, but uniformly drawn labels show accuracy is not hurt: the new outputs are adopted
    LABEL_SHIFT = "label_shift"  # only the class priors moved: the model's priors are re-weighted, no training
    HARMFUL = "harmful"  # flagged and hurt (the check's verdict; the round then adopts, retrains or rolls back)
    ADOPT = "adopt"  # a zoo model fits the new data as it is
    RETRAIN = "retrain"  # a fine-tuned model beat its start on held-back labels and replaced it
    ROLLED_BACK = "rolled_back"  # the episode ran but no fine-tuned model beat its start: the start is kept
    UNRECOVERED = "unrecovered"  # flagged on data like a rolled-back episode's: not retried until the data changes


@dataclass(frozen=True)
class Context:
    """Sent with every request: the lineage state it builds on, its round and edge."""

    state: str
    round: str
    edge_id: str = "edge"
    fetch: str | None = None  # HANDSHAKE only: the sha256 of a checkpoint the edge lacks
    peers: tuple[str, ...] = ()  # CHECK, PREPARE: other edges' states whose zoo models are candidates too

    def extra(self) -> dict[str, Any]:
        """Application fields for the request (round and edge id travel as fields of their own)."""
        out: dict[str, Any] = {"state": self.state}
        if self.fetch is not None:
            out["fetch"] = self.fetch
        if self.peers:
            out["peers"] = ",".join(self.peers)  # the wire's extra holds scalars only
        return out


@dataclass(frozen=True)
class Reply:
    """The data center's answer, the same in every adapter.

    `sha256` names the checkpoint the answer is about (None when there is none); `data`
    carries its bytes when it travels; `info` holds the step's facts (always `state`, the
    child state's key).
    """

    flag: bool
    sha256: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    data: bytes | None = None


Frame = pd.DataFrame | None
Exchange = Callable[[Message, Frame, Frame, Context], Awaitable[Reply]]
Handler = Callable[[str, Frame, Frame, dict[str, Any]], Reply]


def metadata(context: Context) -> dict[str, Any]:
    """The metadata the data center's handler reads, as the protocol server builds it."""
    return {"round": context.round, "edge_id": context.edge_id, **context.extra()}


def in_process(handle: Handler) -> Exchange:
    """An `Exchange` that calls the data center's handler directly (no network)."""

    async def exchange(message: Message, query: Frame, random: Frame, context: Context) -> Reply:
        return handle(message.value, query, random, metadata(context))

    return exchange


@dataclass(frozen=True)
class LabelNeeds:
    """Labels the data center needs from the edge at each step, announced in its handshake.

    Beyond these, a state-check reply may ask for `labels_wanted` labelled rows of the random
    sample (the harm test): the edge labels that many rows, in its own seeded random order,
    first in the frame, and asks again.
    """

    check: int  # labelled rows in the state check's random sample up front (0: the detector is label-free)
    prepare: int  # uniform labelled rows of the random sample at least, to choose the start and validate

    def to_info(self) -> dict[str, int]:
        return {"labels_check": self.check, "labels_prepare": self.prepare}

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> "LabelNeeds":
        try:
            return cls(int(info["labels_check"]), int(info["labels_prepare"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the handshake does not say which labels the data center needs: {exc}") from None


def may_query(labels_left: int, iterations: int, *, query_size: int, max_iterations: int) -> bool:
    """The episode's budget rule, the same on both sides: another batch of queries fits."""
    return iterations < max_iterations and labels_left >= query_size
