"""`normal`: is the model still fit for the edge's data? The configured detector decides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mlcore.contract import Reply
from mlcore.frames import frame_features, frame_labels
from mlcore.seeding import rng_for
from mlcore.training import predict_proba

from . import detectors
from .errors import RequestError

if TYPE_CHECKING:
    from .service import DataCenter


def check(center: DataCenter, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
    """Drift check of the current model on the unlabelled random sample; state unchanged."""
    key, snapshot = center.parent_state(metadata)
    frame = center.sample_frame(random, "random_dataframe")
    probabilities = predict_proba(center.model(snapshot.current), center.as_images(frame_features(frame)))
    verdict = detect(center, snapshot.monitor_reference(), probabilities, frame_labels(frame), metadata)
    return Reply(verdict.drift, None, {
        "state": key, "flagged": verdict.drift, "detector": verdict.detector, "p_value": verdict.p_value,
        "statistic": verdict.statistic, "current": snapshot.current,
    })


def detect(center: DataCenter, reference: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, metadata: dict) -> detectors.Verdict:
    config = center.settings.datacenter
    observation = detectors.Observation(reference, probabilities, labels, config,
                                        rng_for(center.settings.seed, "mmd", metadata.get("round")))
    try:
        return detectors.DETECTORS[config.detector].run(observation)
    except ValueError as exc:  # e.g. a labelled detector given no labels
        raise RequestError(str(exc)) from exc
