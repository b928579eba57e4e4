"""One edge round: infer the batch, ask for a state check, and run a retraining episode if flagged.

The data center is reached through `exchange(message_type, query, random, extra)`, an async
callable returning (flag, checkpoint_path, info); the CLI binds it to the protocol client.
True labels are read only by the oracle (for queried rows) and by the evaluation figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np
import pandas as pd
from torch import nn

from mlcore.checkpoints import load_checkpoint
from mlcore.datasets import Dataset, Splits
from mlcore.frames import build_sample_frame
from mlcore.rounds import RoundSpec
from mlcore.seeding import rng_for
from mlcore.settings import Settings
from mlcore.stream import RoundBatch, draw_round_batch
from mlcore.training import embed, predict_proba

from .oracle import LabelOracle
from .strategies import select_queries

log = logging.getLogger("edge")

Exchange = Callable[[str, pd.DataFrame | None, pd.DataFrame | None, dict[str, Any]], Awaitable[tuple[bool, str | None, dict[str, Any]]]]


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
                 exchange: Exchange, edge_id: str = "edge") -> None:
        for key in ("checkpoint", "sha256", "state"):
            if not isinstance(previous.get(key), str):
                raise RoundError(f"previous output lacks a string {key!r} (need checkpoint, sha256, state)")
        self.settings, self.dataset, self.spec = settings, dataset, spec
        self.previous, self.exchange, self.edge_id = previous, exchange, edge_id
        self.batch: RoundBatch = draw_round_batch(dataset, splits, spec, settings.seed, settings.edge.batch_size)
        # the ece detector needs a labelled random sample: those labels are counted on top of the
        # episode's budget (the label-free detectors spend none)
        monitoring = settings.edge.random_sample if settings.datacenter.detector == "ece" else 0
        self.oracle = LabelOracle(self.batch.labels, settings.edge.label_budget + monitoring)
        self.state = previous["state"]
        self.labelled_rows = np.zeros(0, dtype=np.int64)

    def frame(self, rows: np.ndarray, labelled: bool) -> pd.DataFrame:
        labels = self.oracle.reveal(rows) if labelled else None
        return build_sample_frame(self.batch.ids[rows], self.batch.images[rows], labels, self.spec.id, self.spec.tag)

    async def ask(self, message: str, query: pd.DataFrame | None, random: pd.DataFrame | None) -> tuple[bool, str | None, dict]:
        flag, checkpoint, info = await self.exchange(message, query, random,
                                                     {"state": self.state, "round": self.spec.id, "edge_id": self.edge_id})
        self.state = _require(info, "state", message)
        return flag, checkpoint, info

    def load(self, path: str | None, info: dict, message: str) -> tuple[nn.Module, str, str]:
        if not path:
            raise RoundError(f"the data center's {message} reply carries no checkpoint path")
        sha = _require(info, "sha256", message)
        model, _ = load_checkpoint(path, sha)
        return model, path, sha

    async def run(self) -> RoundOutcome:
        started = time.monotonic()
        edge, rounds_seed = self.settings.edge, self.settings.seed
        model, path, sha = self.load(self.previous["checkpoint"], self.previous, "previous")
        probs_before = predict_proba(model, self.batch.images)
        accuracy_before = float(np.mean(probs_before.argmax(1) == self.batch.labels))  # evaluation only

        random_rows = np.sort(rng_for(rounds_seed, "random-sample", self.spec.id).choice(
            len(self.batch.ids), size=edge.random_sample, replace=False))
        label_random = self.settings.datacenter.detector == "ece"  # the only detector that needs labels
        random_frame = self.frame(random_rows, labelled=label_random)
        flagged, _, normal_info = await self.ask("normal", None, random_frame)
        log.info("round %s: state check by %s: flagged=%s p=%s", self.spec.id, normal_info.get("detector"),
                 flagged, normal_info.get("p_value"))

        retrained, iterations, selection_info = False, 0, {}
        if flagged:
            selection_frame = None
            if self.settings.datacenter.selection in ("leep", "logme"):
                count = min(self.settings.datacenter.selection_labels, self.oracle.remaining)
                if count > 0:
                    rows = np.sort(rng_for(rounds_seed, "selection", self.spec.id).choice(len(self.batch.ids), size=count, replace=False))
                    selection_frame = self.frame(rows, labelled=True)
                    self.labelled_rows = rows
            if self.settings.datacenter.selection in ("leep", "logme") and selection_frame is None:
                log.info("round %s: flagged but no label budget for model selection: keeping the model", self.spec.id)
            else:
                more, start_path, selection_info = await self.ask("prep_retraining", selection_frame, self.frame(random_rows, labelled=False))
                model, path, sha = self.load(start_path, selection_info, "prep_retraining")
                log.info("round %s: start from %s (round %s, %s); retraining needed: %s", self.spec.id, sha[:12],
                         selection_info.get("selected_round"), selection_info.get("selected_shift"), more)
                while more and iterations < edge.max_iterations and self.oracle.remaining >= edge.query_size:
                    probs = predict_proba(model, self.batch.images)
                    needs_embedding = edge.strategy in ("kcenter", "badge")
                    rows = select_queries(edge.strategy, probs, edge.query_size,
                                          rng_for(rounds_seed, "query", self.spec.id, iterations),
                                          labelled=self.labelled_rows,
                                          embeddings=embed(model, self.batch.images) if needs_embedding else None)
                    if len(rows) == 0:
                        break
                    more, new_path, info = await self.ask("retraining", self.frame(rows, labelled=True), None)
                    self.labelled_rows = np.concatenate([self.labelled_rows, rows])
                    model, path, sha = self.load(new_path, info, "retraining")
                    iterations += 1
                    retrained = True
                    log.info("round %s: retraining %d with %d labels -> %s (more needed: %s)", self.spec.id,
                             iterations, self.oracle.labels_used, sha[:12], more)

        probs_after = predict_proba(model, self.batch.images)
        accuracy_after = float(np.mean(probs_after.argmax(1) == self.batch.labels))
        seconds = time.monotonic() - started
        checkpoint = {"checkpoint": path, "sha256": sha, "state": self.state, "retrained": retrained,
                      "labels_used": self.oracle.labels_used, "round": self.spec.id, "shift": self.spec.tag,
                      "seconds": round(seconds, 3)}
        metrics = {
            "round": self.spec.id, "shift": self.spec.tag, "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after, "flagged": bool(flagged), "retrained": retrained,
            "labels_used": self.oracle.labels_used, "iterations": iterations,
            "detector": normal_info.get("detector"), "p_value": normal_info.get("p_value"),
            "statistic": normal_info.get("statistic"), "strategy": edge.strategy,
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
