"""One edge round: infer the batch, ask for a state check, and adapt only if accuracy is hurt.

The batch splits in two: a uniform random sample (the state check; its rows, labelled in a
seeded random order as the harm test asks, also choose the start and validate what is
trained) and the rest (the candidates of active queries). Accuracy is reported on held-out
rows carrying the round's shift (`mlcore.stream.draw_evaluation_batch`), never on rows the
model trained on; the in-sample figure is kept under its own name.

The data center is reached through an `mlcore.contract.Exchange` (the protocol client in the
CLI, `contract.in_process` in tests and benchmarks). Checkpoints arrive as bytes in the
replies and are kept, verified, in the edge's own store: the edge never opens a data-center
path. True labels are read only by the oracle (for asked-for rows) and by the evaluation figures.
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
from mlcore.contract import Context, Decision, Exchange, LabelNeeds, Message, Reply, may_query
from mlcore.datasets import Dataset, Splits
from mlcore.frames import build_sample_frame
from mlcore.rounds import RoundSpec
from mlcore.seeding import rng_for
from mlcore.settings import Settings
from mlcore.evaluation import weighted_accuracy
from mlcore.stream import EvaluationBatch, RoundBatch, draw_evaluation_batch, draw_round_batch
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
                 exchange: Exchange, store: str | Path, edge_id: str = "edge", peers: tuple[str, ...] = ()) -> None:
        for key in ("sha256", "state"):
            if not isinstance(previous.get(key), str):
                raise RoundError(f"previous output lacks a string {key!r} (need sha256 and state)")
        self.settings, self.dataset, self.spec = settings, dataset, spec
        self.previous, self.exchange, self.edge_id = previous, exchange, edge_id
        self.peers = tuple(peers)  # other edges' states: their zoo models are candidates when choosing a start
        self.store = Path(store)
        self.batch: RoundBatch = draw_round_batch(dataset, splits, spec, settings.seed, settings.edge.batch_size)
        self.evaluation: EvaluationBatch = draw_evaluation_batch(dataset, splits, spec, settings.seed,
                                                                 settings.edge.evaluation_size)
        # uniform labels (harm test, selection, validation) come from the random sample, queries from the rest
        self.oracle = LabelOracle(self.batch.labels, settings.edge.label_budget + settings.edge.random_sample)
        self.needs = LabelNeeds(0, 0)
        self.state = previous["state"]
        self.random_rows = rng_for(settings.seed, "random-sample", spec.id).choice(
            len(self.batch.ids), size=settings.edge.random_sample, replace=False)  # in labelling order
        self.uniform_labels = 0  # how many of random_rows (in order) are labelled
        self.queried_rows = np.zeros(0, dtype=np.int64)
        self.queue_wait = 0.0  # seconds the data center's training queue held this round's retrainings
        self.training_seconds = 0.0  # seconds the data center fine-tuned for this round

    def frame(self, rows: np.ndarray, labelled: int | bool) -> pd.DataFrame:
        """A sample frame of `rows`; the first `labelled` rows (all if True) carry their label."""
        count = len(rows) if labelled is True else int(labelled)
        labels = np.full(len(rows), -1, dtype=np.int64)
        if count:
            labels[:count] = self.oracle.reveal(rows[:count])
        return build_sample_frame(self.batch.ids[rows], self.batch.images[rows], labels, self.spec.id, self.spec.tag)

    async def ask(self, message: Message, query: pd.DataFrame | None, random: pd.DataFrame | None,
                  fetch: str | None = None) -> Reply:
        peers = self.peers if message in (Message.CHECK, Message.PREPARE) else ()
        reply = await self.exchange(message, query, random, Context(self.state, self.spec.id, self.edge_id, fetch, peers))
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
        self.uniform_labels = min(self.needs.check, len(self.random_rows))
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

    async def ask_labelling(self, message: Message) -> Reply:
        """Ask; while the reply wants more uniform labels of the random sample (the harm test),
        label the next rows in the sample's order and ask again.

        CHECK carries them in the random frame (labelled rows first), PREPARE as its query frame.
        """
        while True:
            if message is Message.CHECK:
                query, random = None, self.frame(self.random_rows, self.uniform_labels)
            else:
                rows = self.random_rows[:self.uniform_labels]
                query, random = (self.frame(rows, True) if len(rows) else None), self.frame(self.random_rows, False)
            reply = await self.ask(message, query, random)
            wanted = int(reply.info.get("labels_wanted") or 0)
            if wanted <= self.uniform_labels:
                return reply
            if wanted > len(self.random_rows) or wanted - self.uniform_labels > self.oracle.remaining:
                raise RoundError(f"the data center wants {wanted} uniform labels; the random sample and budget "
                                 f"allow {min(len(self.random_rows), self.uniform_labels + self.oracle.remaining)}")
            self.uniform_labels = wanted

    async def check(self) -> Reply:
        """The state check on the random sample, with as many uniform labels as the harm test asks."""
        reply = await self.ask_labelling(Message.CHECK)
        info = dict(reply.info)
        log.info("round %s: state check by %s: flagged=%s p=%s decision=%s (%d labels)", self.spec.id,
                 info.get("detector"), info.get("flagged"), info.get("p_value"), info.get("decision"),
                 self.uniform_labels)
        if reply.sha256 is not None:  # a re-weighted model was adopted
            self.keep(reply, Message.CHECK)
        return reply

    async def choose_start(self) -> Reply:
        """The best starting checkpoint of the zoo, chosen on uniform labels (at least `needs.prepare`);
        more are labelled while the data center tests whether another model fits as it is."""
        self.uniform_labels = min(len(self.random_rows), max(self.uniform_labels, self.needs.prepare))
        prepared = await self.ask_labelling(Message.PREPARE)
        self.keep(prepared, Message.PREPARE)
        log.info("round %s: start from %s (round %s, %s); retraining needed: %s", self.spec.id,
                 str(prepared.sha256)[:12], prepared.info.get("selected_round"), prepared.info.get("selected_shift"),
                 prepared.flag)
        return prepared

    async def episode(self, model: nn.Module, path: str, sha: str) -> tuple[nn.Module, str, str, int, Reply | None]:
        """Query the most informative rows outside the random sample and retrain until told to stop."""
        edge, iterations, more, reply = self.settings.edge, 0, True, None
        excluded = np.sort(self.random_rows)
        if edge.train_before_query and self.uniform_labels >= 2 and edge.max_iterations > 0:
            # the first fine-tune on the uniform labels the check paid for: the first queries are
            # then chosen by a model that has seen the shift (and one query batch fewer is spent)
            model, path, sha, reply = await self.iterate(None)
            more = reply.flag
            iterations += 1
        while more and may_query(self.oracle.remaining - (len(self.random_rows) - self.uniform_labels), iterations,
                                 query_size=edge.query_size, max_iterations=edge.max_iterations):
            probs = predict_proba(model, self.batch.images)
            needs_embedding = edge.strategy in ("kcenter", "badge")
            rows = select_queries(edge.strategy, probs, edge.query_size,
                                  rng_for(self.settings.seed, "query", self.spec.id, iterations),
                                  labelled=np.concatenate([excluded, self.queried_rows]),
                                  embeddings=embed(model, self.batch.images) if needs_embedding else None)
            if len(rows) == 0:
                break
            model, path, sha, reply = await self.iterate(rows)
            more = reply.flag
            iterations += 1
        return model, path, sha, iterations, reply

    async def iterate(self, rows: np.ndarray | None) -> tuple[nn.Module, str, str, Reply]:
        """One `retraining` request with the labelled `rows` (None: none, the episode's first
        fine-tune on the check's labels); keep the model it names. Returns it and the reply,
        whose flag says whether more is needed."""
        reply = await self.ask(Message.RETRAIN, None if rows is None else self.frame(rows, True), None)
        self.queue_wait += float(reply.info.get("queue_wait") or 0.0)
        self.training_seconds += float(reply.info.get("training_seconds") or 0.0)
        if rows is not None:
            self.queried_rows = np.concatenate([self.queried_rows, rows])
        self.keep(reply, Message.RETRAIN)
        model, path, sha = self.load(reply.sha256)
        log.info("round %s: retraining %s with %d labels -> %s (accepted: %s, more needed: %s)", self.spec.id,
                 reply.info.get("iteration"), self.oracle.labels_used, sha[:12], reply.info.get("accepted"),
                 reply.flag)
        return model, path, sha, reply

    async def run(self) -> RoundOutcome:
        """Check the model on this batch; if hurt, adopt a zoo model or run an episode."""
        started = time.monotonic()
        await self.handshake()
        model, path, sha = self.load(self.previous["sha256"])
        probs_before = predict_proba(model, self.batch.images)
        held_out_before = self.held_out_accuracy(model)
        checked = await self.check()
        normal_info = dict(checked.info)
        decision = str(normal_info.get("decision") or (Decision.HARMFUL.value if checked.flag else Decision.STABLE.value))
        iterations, selection_info, labels_check, episode_stop = 0, {}, self.oracle.labels_used, None
        if checked.sha256 is not None:
            model, path, sha = self.load(checked.sha256)
        if checked.flag:
            prepared = await self.choose_start()
            selection_info = dict(prepared.info)
            model, path, sha = self.load(prepared.sha256)
            decision = Decision.ADOPT.value
            if prepared.flag:
                model, path, sha, iterations, last = await self.episode(model, path, sha)
                decision = str(last.info.get("decision")) if last is not None else Decision.ROLLED_BACK.value
                # the data center's reason; None: the edge ran out of rows or labels to query
                episode_stop = None if last is None else last.info.get("stopped")
        retrained = decision == Decision.RETRAIN.value
        from_peer = bool(selection_info.get("from_peer") or normal_info.get("from_peer"))
        probs_after = predict_proba(model, self.batch.images)
        held_out_after = self.held_out_accuracy(model) if sha != self.previous["sha256"] else held_out_before
        seconds = time.monotonic() - started
        checkpoint = {"checkpoint": path, "sha256": sha, "state": self.state, "retrained": retrained,
                      "decision": decision, "labels_used": self.oracle.labels_used, "round": self.spec.id,
                      "shift": self.spec.tag, "seconds": round(seconds, 3)}
        metrics = {
            "round": self.spec.id, "shift": self.spec.tag, "decision": decision,
            "accuracy_before": held_out_before, "accuracy_after": held_out_after,
            "accuracy_before_in_sample": accuracy_of(probs_before, self.batch.labels),
            "accuracy_after_in_sample": accuracy_of(probs_after, self.batch.labels),
            "evaluation_rows": int(len(self.evaluation.labels)),
            "flagged": bool(normal_info.get("flagged", checked.flag)), "retrained": retrained,
            "labels_used": self.oracle.labels_used, "labels_check": labels_check,
            "labels_uniform": self.uniform_labels, "labels_queried": int(len(self.queried_rows)),
            "iterations": iterations, "episode_stop": episode_stop,
            "detector": normal_info.get("detector"), "p_value": normal_info.get("p_value"),
            "statistic": normal_info.get("statistic"), "p_value_original": normal_info.get("p_value_original"),
            "reference_accuracy": normal_info.get("reference_accuracy"),
            "harm_accuracy": normal_info.get("harm_accuracy"), "label_shift": bool(normal_info.get("label_shift")),
            # the flag re-tests a shift adopted on one harm test (check.monitor)
            "confirming": bool(normal_info.get("confirming")),
            # the DoC estimate of the tested model disputed a benign harm test: it ran on (check.harm_decision)
            "disputed": bool(normal_info.get("disputed")), "estimate_candidate": normal_info.get("estimate_candidate"),
            "estimate_atc": normal_info.get("estimate_atc"), "estimate_doc": normal_info.get("estimate_doc"),
            "strategy": self.settings.edge.strategy,
            "selection": selection_info.get("selection"), "selected_checkpoint": selection_info.get("sha256"),
            "selected_round": selection_info.get("selected_round"), "selected_shift": selection_info.get("selected_shift"),
            "selection_scores": selection_info.get("scores"), "checkpoint_sha256": sha,
            "from_peer": from_peer,  # the model adopted or started from came from another edge's lineage
            "reuse_spared_training": from_peer and decision == Decision.ADOPT.value,
            "pooled_labels": int(selection_info.get("pooled_labels") or 0),  # a peer's labels of this round trained on too
            "batch_size": len(self.batch.ids), "seconds": round(seconds, 3), "queue_wait": round(self.queue_wait, 3),
            "training_seconds": round(self.training_seconds, 3),
        }
        predictions = pd.DataFrame({
            "id": self.batch.ids, "label": pd.array(self.batch.labels, dtype="Int64"),
            "pred_before": probs_before.argmax(1).astype(np.int64),
            "confidence_before": probs_before.max(1).astype(np.float32),
            "pred": probs_after.argmax(1).astype(np.int64), "confidence": probs_after.max(1).astype(np.float32),
            "queried": np.isin(np.arange(len(self.batch.ids)), self.queried_rows),
            "labelled": np.isin(np.arange(len(self.batch.ids)), np.concatenate([self.queried_rows,
                                                                                self.random_rows[:self.uniform_labels]])),
            "round": self.spec.id, "shift": self.spec.tag,
        })
        return RoundOutcome(checkpoint, metrics, predictions)

    def held_out_accuracy(self, model: nn.Module) -> float:
        """Accuracy on held-out rows carrying this round's shift (never trained on): what is reported."""
        batch = self.evaluation
        return weighted_accuracy(predict_proba(model, batch.images), batch.labels, batch.weights)


def summary_line(outcome: RoundOutcome) -> str:
    m = outcome.metrics
    return (f"round {m['round']} shift={m['shift']} held-out acc {m['accuracy_before']:.2f}->{m['accuracy_after']:.2f} "
            f"decision={m['decision']} labels={m['labels_used']}")
