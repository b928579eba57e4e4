"""One edge round: infer the batch, ask for a state check, and run a retraining episode if flagged.

The data center is reached through an `mlcore.contract.Exchange` (the protocol client in the
CLI, `contract.in_process` in tests and benchmarks). Checkpoints arrive as bytes in the
replies and are kept, verified, in the edge's own store: the edge never opens a data-center
path. True labels are read only by the oracle (for queried rows) and by the evaluation figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from mlcore.checkpoints import load_checkpoint, store_checkpoint
from mlcore.contract import Context, Exchange, LabelNeeds, Message, Reply, may_query
from mlcore.datasets import Dataset, Splits
from mlcore.frames import build_sample_frame
from mlcore.rounds import RoundSpec
from mlcore.seeding import rng_for
from mlcore.settings import Settings
from mlcore.stream import RoundBatch, draw_round_batch
from mlcore.training import accuracy_of, embed, predict_proba

from .oracle import LabelOracle
from .strategies import select_queries

log = logging.getLogger("edge")


class RoundError(RuntimeError):
    """The round cannot go on (bad previous output, a reply without what it must carry)."""


@dataclass
class RoundOutcome:
    checkpoint: dict[str, Any]
    metrics: dict[str, Any]
    predictions: pd.DataFrame


def _require(info: dict[str, Any], key: str, message: str) -> Any:
    if info.get(key) is None:
        raise RoundError(f"the data center's {message} reply lacks info[{key!r}]")
    return info[key]


class EdgeRound:
    def __init__(self, settings: Settings, dataset: Dataset, splits: Splits, spec: RoundSpec, previous: dict[str, Any],
                 exchange: Exchange, store: str | Path, edge_id: str = "edge") -> None:
        for key in ("sha256", "state"):
            if not isinstance(previous.get(key), str):
                raise RoundError(f"previous output lacks a string {key!r} (need sha256 and state)")
        self.settings, self.dataset, self.spec = settings, dataset, spec
        self.previous, self.exchange, self.edge_id = previous, exchange, edge_id
        self.store = Path(store)
        self.batch: RoundBatch = draw_round_batch(dataset, splits, spec, settings.seed, settings.edge.batch_size)
        self.oracle = LabelOracle(self.batch.labels, settings.edge.label_budget)  # until the handshake says more
        self.needs = LabelNeeds(0, 0)
        self.state = previous["state"]
        self.labelled_rows = np.zeros(0, dtype=np.int64)

    def frame(self, rows: np.ndarray, labelled: bool) -> pd.DataFrame:
        labels = self.oracle.reveal(rows) if labelled else None
        return build_sample_frame(self.batch.ids[rows], self.batch.images[rows], labels, self.spec.id, self.spec.tag)

    async def ask(self, message: Message, query: pd.DataFrame | None, random: pd.DataFrame | None,
                  fetch: str | None = None) -> Reply:
        reply = await self.exchange(message, query, random, Context(self.state, self.spec.id, self.edge_id, fetch))
        if message is not Message.HANDSHAKE:
            self.state = _require(dict(reply.info), "state", message.value)
        return reply

    async def handshake(self) -> None:
        """Learn which labels the data center needs; fetch the starting checkpoint if it is not here."""
        sha = self.previous["sha256"]
        fetch = None if (self.store / f"{sha}.pt").is_file() else sha
        reply = await self.ask(Message.HANDSHAKE, None, None, fetch=fetch)
        try:
            self.needs = LabelNeeds.from_info(reply.info)
        except ValueError as exc:
            raise RoundError(str(exc)) from None
        # labels for the state check are counted on top of the episode's budget
        self.oracle = LabelOracle(self.batch.labels, self.settings.edge.label_budget + self.needs.check)
        if fetch is not None:
            self.keep(reply, Message.HANDSHAKE)

    def keep(self, reply: Reply, message: Message) -> Path:
        """Verify and store the checkpoint a reply carries; return the edge's own copy."""
        if reply.sha256 is None or reply.data is None:
            raise RoundError(f"the data center's {message.value} reply carries no checkpoint")
        try:
            return store_checkpoint(self.store, reply.data, reply.sha256)
        except ValueError as exc:  # CheckpointError: the bytes do not hash to their name
            raise RoundError(str(exc)) from exc

    def load(self, sha: str) -> tuple[nn.Module, str, str]:
        path = self.store / f"{sha}.pt"
        model, _ = load_checkpoint(path, sha)
        return model, str(path), sha

    async def check(self, random_rows: np.ndarray) -> tuple[bool, dict[str, Any]]:
        """The state check: a random sample (labelled only if the data center said so)."""
        reply = await self.ask(Message.CHECK, None, self.frame(random_rows, labelled=self.needs.check > 0))
        info = dict(reply.info)
        log.info("round %s: state check by %s: flagged=%s p=%s", self.spec.id, info.get("detector"), reply.flag,
                 info.get("p_value"))
        return reply.flag, info

    async def choose_start(self, random_rows: np.ndarray) -> Reply | None:
        """Ask for the best starting checkpoint of the zoo (with the labels selection needs)."""
        selection_frame = None
        if self.needs.prepare:
            count = min(self.needs.prepare, self.oracle.remaining)
            if count <= 0:
                log.info("round %s: flagged but no label budget for model selection: keeping the model", self.spec.id)
                return None
            rows = np.sort(rng_for(self.settings.seed, "selection", self.spec.id).choice(
                len(self.batch.ids), size=count, replace=False))
            selection_frame = self.frame(rows, labelled=True)
            self.labelled_rows = rows
        prepared = await self.ask(Message.PREPARE, selection_frame, self.frame(random_rows, labelled=False))
        self.keep(prepared, Message.PREPARE)
        log.info("round %s: start from %s (round %s, %s); retraining needed: %s", self.spec.id,
                 str(prepared.sha256)[:12], prepared.info.get("selected_round"), prepared.info.get("selected_shift"),
                 prepared.flag)
        return prepared

    async def episode(self, model: nn.Module, path: str, sha: str, *, more: bool) -> tuple[nn.Module, str, str, int]:
        """Query the most informative samples and retrain until the data center or the budget says stop."""
        edge, iterations = self.settings.edge, 0
        while more and may_query(self.oracle.remaining, iterations, query_size=edge.query_size,
                                 max_iterations=edge.max_iterations):
            probs = predict_proba(model, self.batch.images)
            needs_embedding = edge.strategy in ("kcenter", "badge")
            rows = select_queries(edge.strategy, probs, edge.query_size,
                                  rng_for(self.settings.seed, "query", self.spec.id, iterations),
                                  labelled=self.labelled_rows,
                                  embeddings=embed(model, self.batch.images) if needs_embedding else None)
            if len(rows) == 0:
                break
            reply = await self.ask(Message.RETRAIN, self.frame(rows, labelled=True), None)
            more = reply.flag
            self.labelled_rows = np.concatenate([self.labelled_rows, rows])
            self.keep(reply, Message.RETRAIN)
            model, path, sha = self.load(reply.sha256)
            iterations += 1
            log.info("round %s: retraining %d with %d labels -> %s (more needed: %s)", self.spec.id,
                     iterations, self.oracle.labels_used, sha[:12], more)
        return model, path, sha, iterations

    async def run(self) -> RoundOutcome:
        """Check the model on this batch; if flagged, choose a start and run an episode."""
        started = time.monotonic()
        await self.handshake()
        model, path, sha = self.load(self.previous["sha256"])
        probs_before = predict_proba(model, self.batch.images)
        accuracy_before = accuracy_of(probs_before, self.batch.labels)  # evaluation only
        random_rows = np.sort(rng_for(self.settings.seed, "random-sample", self.spec.id).choice(
            len(self.batch.ids), size=self.settings.edge.random_sample, replace=False))
        flagged, normal_info = await self.check(random_rows)
        iterations, selection_info = 0, {}
        if flagged:
            prepared = await self.choose_start(random_rows)
            if prepared is not None:
                selection_info = dict(prepared.info)
                model, path, sha = self.load(prepared.sha256)
                model, path, sha, iterations = await self.episode(model, path, sha, more=prepared.flag)
        retrained = iterations > 0
        probs_after = predict_proba(model, self.batch.images)
        accuracy_after = accuracy_of(probs_after, self.batch.labels)
        seconds = time.monotonic() - started
        checkpoint = {"checkpoint": path, "sha256": sha, "state": self.state, "retrained": retrained,
                      "labels_used": self.oracle.labels_used, "round": self.spec.id, "shift": self.spec.tag,
                      "seconds": round(seconds, 3)}
        metrics = {
            "round": self.spec.id, "shift": self.spec.tag, "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after, "flagged": bool(flagged), "retrained": retrained,
            "labels_used": self.oracle.labels_used, "iterations": iterations,
            "detector": normal_info.get("detector"), "p_value": normal_info.get("p_value"),
            "statistic": normal_info.get("statistic"), "strategy": self.settings.edge.strategy,
            "selection": selection_info.get("selection"), "selected_checkpoint": selection_info.get("sha256"),
            "selected_round": selection_info.get("selected_round"), "selected_shift": selection_info.get("selected_shift"),
            "selection_scores": selection_info.get("scores"), "start_accuracy": selection_info.get("start_accuracy"), "checkpoint_sha256": sha, "batch_size": len(self.batch.ids),
        }
        predictions = pd.DataFrame({
            "id": self.batch.ids, "label": pd.array(self.batch.labels, dtype="Int64"),
            "pred_before": probs_before.argmax(1).astype(np.int64),
            "confidence_before": probs_before.max(1).astype(np.float32),
            "pred": probs_after.argmax(1).astype(np.int64), "confidence": probs_after.max(1).astype(np.float32),
            "queried": np.isin(np.arange(len(self.batch.ids)), self.labelled_rows),
            "round": self.spec.id, "shift": self.spec.tag,
        })
        return RoundOutcome(checkpoint, metrics, predictions)


def summary_line(outcome: RoundOutcome) -> str:
    m = outcome.metrics
    return (f"round {m['round']} shift={m['shift']} acc {m['accuracy_before']:.2f}->{m['accuracy_after']:.2f} "
            f"retrained={'yes' if m['retrained'] else 'no'} labels={m['labels_used']}")
