"""`normal`: is the model still fit for the edge's data? A cheap gate, then labels only where needed.

1. The label-free gate: the configured detector (KS on the softmax outputs by default) on
   the unlabelled random sample. Quiet: `stable`, no label spent.
2. On a flag, if the sample looks like the source data again (KS against the model's outputs on
   the held-out source split; for a specialist, the base model's own gate must agree), the
   model's accuracy there is known from labelled rows the data center holds: benign, harmful, or
   the base adopted where it reads those rows clearly better, without asking the edge for a
   label. A switch back to the source costs nothing.
3. Otherwise, if only the class priors moved (black-box shift estimation: the sample's
   outputs look like the source's re-weighted by class), the candidate is the current model
   with re-weighted priors; otherwise the current model itself.
4. The harm test: a truncated SPRT on uniformly drawn labels of the random sample (the edge
   labels the first `labels_wanted` rows of the frame and asks again). Benign: the candidate
   and its outputs here are adopted (`benign` or `label_shift`), no training; harmful: the
   flag stands and the edge opens an episode with those labels. A benign call is disputed
   when the label-free (DoC) estimate is more than `harm_check.label_free_drop` below the
   reference and the labels do not contradict it (`looks_hurt`): the test then runs on to
   `harm_check.disputed_labels` labels, and they decide (`harm_decision`).

Each request is answered from the frame alone (the labels so far travel in it), so the test
needs no state of its own between requests.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from mlcore.contract import Decision, Reply
from mlcore.frames import frame_digest, frame_features, frame_labels
from mlcore.models import is_specialist
from mlcore.settings import HarmCheckSettings
from mlcore.seeding import rng_for
from mlcore.training import accuracy_of, predict_proba

from . import detectors
from .errors import RequestError
from .estimates import accuracy_estimates, doc_estimate
from .harm_test import HarmDecision, HarmTest
from .label_shift import bbse_weights, confusion_matrix, weighted_ks_test
from .peers import from_peer, with_peer_models
from .state import Snapshot, StateError, ZooEntry, state_key

if TYPE_CHECKING:
    from .service import DataCenter

#: Class weights this close to 1 everywhere are no label shift (the flag has another cause).
MIN_PRIOR_CHANGE = 0.2
#: The harm test's labels refute the label-free estimate when their number right would be
#: this unlikely (one-sided binomial) at the estimated accuracy.
LABELS_CONTRADICT = 0.05
#: A zoo model's own data again needs more than "not flagged" (p >= alpha): adopting it costs no
#: label and no test, so a sample only somewhat like its window must not pass.
MIN_HOME_P = 0.1


def check(center: DataCenter, query: Any, random: Any, metadata: dict[str, Any]) -> Reply:
    """Drift check of the current model on the random sample; then, if flagged, the harm test."""
    key, snapshot = center.parent_state(metadata)
    frame = center.sample_frame(random, "random_dataframe")
    images, labels = center.as_images(frame_features(frame)), frame_labels(frame)
    current = snapshot.current
    probabilities = predict_proba(center.model(current), images)
    verdict, original, confirming = monitor(center, snapshot, probabilities, labels, metadata)
    # what an adoption records: the distance to the model's own window (`Snapshot.adopted_statistic`),
    # not to an adopted window or to the base's (a specialist's witness)
    own_statistic = (verdict if original is None else original).statistic
    if not verdict.drift:
        verdict = specialist_watch(center, snapshot, images) or verdict
    source_probabilities, source_labels = center.source_view(current)
    info: dict[str, Any] = {
        "state": key, "flagged": verdict.drift, "detector": verdict.detector, "p_value": verdict.p_value,
        "statistic": verdict.statistic, "current": current,
        "p_value_original": None if original is None else original.p_value,
        "reference_accuracy": center.reference_accuracy(snapshot), "confirming": confirming,
        **{f"estimate_{name}": value for name, value in
           accuracy_estimates(source_probabilities, source_labels, probabilities).items()},
    }
    config = center.settings.datacenter
    if not verdict.drift:
        return Reply(False, None, {**info, "decision": Decision.STABLE.value, "labels_wanted": 0})
    if not config.harm_check.enabled:
        return Reply(True, None, {**info, "decision": Decision.HARMFUL.value, "labels_wanted": 0})
    source_like = looks_like_source(center, snapshot, source_probabilities, probabilities, images)
    info["source_like"] = source_like
    if source_like:  # back on the source, where this model's accuracy is known from labelled held-out rows
        fit = accuracy_of(source_probabilities, source_labels) >= info["reference_accuracy"] - config.harm_check.tolerance
        if fit and not base_takes_over(center, snapshot, source_probabilities, images):
            child_key, child = adopt(center, key, snapshot, current, probabilities, own_statistic, frame, metadata)
            center.store.save(child_key, child)
            return Reply(False, None, {**info, "state": child_key, "decision": Decision.BENIGN.value, "labels_wanted": 0})
    fleet, home = snapshot, None
    if config.recognise_zoo:
        fleet = with_peer_models(center, snapshot, metadata, drafts=False)
        home = recognised(center, fleet, images)
    if home is None and source_like:
        home = source_model(center, snapshot, images)
    if home is not None:  # a zoo model's own data again (a switch back, a peer's shift): adopted, no label spent
        sha, p_value = home
        child_key = state_key(key, str(metadata.get("round")), "normal",
                              frame_digest(frame) + str(metadata.get("peers") or ""))
        center.store.save(child_key, Snapshot(key, str(metadata.get("round")), "normal", sha, fleet.zoo, None,
                                              fleet.references))
        return center.checkpoint_reply(False, sha, {**info, "state": child_key, "decision": Decision.ADOPT.value,
                                                    "labels_wanted": 0, "sha256": sha, "p_value_home": p_value,
                                                    "from_peer": from_peer(fleet.entry(sha), metadata)})
    if source_like:
        return Reply(True, None, {**info, "decision": Decision.HARMFUL.value, "labels_wanted": 0})
    failed = failed_episode_window(center, snapshot, probabilities)
    if failed is not None:  # this model's episode on data like this ran to its end and nothing beat it
        return Reply(False, None, {**info, "decision": Decision.UNRECOVERED.value, "labels_wanted": 0,
                                   "p_value_failed": failed})
    candidate, weights = current, label_shift_weights(center, current, probabilities) if config.label_shift else None
    if weights is not None:
        candidate = center.reweighted(current, weights)
        probabilities = predict_proba(center.model(candidate), images)
    known = labels >= 0  # the labelled rows come first in the frame, in the edge's random order
    estimate = doc_estimate(source_probabilities, source_labels, probabilities)  # the candidate's, label-free
    decision, disputed = harm_decision(center.harm_test(snapshot), probabilities[known].argmax(1) == labels[known],
                                       estimate, config.harm_check, len(frame))
    info.update(labels_check=decision.labels, harm_accuracy=decision.accuracy if decision.labels else None,
                harm_log_ratio=decision.log_ratio, label_shift=weights is not None, estimate_candidate=estimate,
                disputed=disputed)
    if decision.outcome == "more":
        if decision.wanted > len(frame):
            raise RequestError(f"the harm test wants {decision.wanted} labelled rows but the random sample has "
                               f"{len(frame)} (harm_check.max_labels must not exceed edge.random_sample)")
        return Reply(False, None, {**info, "decision": "test", "labels_wanted": decision.wanted})
    if decision.outcome == "harmful":
        return Reply(True, None, {**info, "decision": Decision.HARMFUL.value, "labels_wanted": 0})
    child_key, child = adopt(center, key, snapshot, candidate, probabilities, own_statistic, frame, metadata,
                             unconfirmed=not confirming)
    center.store.save(child_key, child)
    outcome = Decision.LABEL_SHIFT if weights is not None else Decision.BENIGN
    info.update(state=child_key, decision=outcome.value, labels_wanted=0)
    if candidate == current:
        return Reply(False, None, info)
    return center.checkpoint_reply(False, candidate, {**info, "sha256": candidate,
                                                      "class_weights": json.dumps([round(float(w), 4) for w in weights])})


def looks_like_source(center: DataCenter, snapshot: Snapshot, source_probabilities: np.ndarray,
                      probabilities: np.ndarray, images: np.ndarray) -> bool:
    """The sample is the source data again: the current model's outputs on it are not told apart
    (KS at alpha) from its outputs on the held-out source split; for a specialist, the base
    model's own gate must not tell it from its source window either.

    A model routed by confidence keeps whichever reading of an input it is surer of, so it can
    read shifted inputs as surely as source ones (MNIST rotate 15 under a contrast model passed as
    the source, for no label, and the rotate-15 + thicker round after it went unflagged)."""
    alpha = center.settings.datacenter.alpha
    if detectors.ks_softmax_test(source_probabilities, probabilities, alpha).drift:
        return False
    return not is_specialist(center.model(snapshot.current)) or quiet_base_witness(center, snapshot, images) is not None


def harm_decision(test: HarmTest, correct: np.ndarray, estimate: float, settings: HarmCheckSettings,
                  available: int) -> tuple[HarmDecision, bool]:
    """(decision, disputed): the harm test's call on `correct`; a benign call that the label-free
    `estimate` disputes (`looks_hurt`) is tested on, to `settings.disputed_labels` or the
    `available` rows of the random sample if fewer, and decided there.

    The test truncated at `max_labels` then runs on with the same Wald limits, curtailment and
    truncation rule, so the first `max_labels` labels settle nothing it would not. Overruled
    outright instead (the rule before), a benign call on 39 of 40 right became a retraining
    wherever DoC reads a shift too low: contrast x0.5, where the CNN's confidence falls 4-12
    points and its accuracy 0-2 (on MNIST, every benign round the benchmark retrained). At
    reference 0.972 and DoC 0.90, an unhurt round is adopted 67% of the time instead of 33% (the
    overrule adopted only at 40 of 40 right), a 5-point drop 7.5% instead of 2.9% (the 40 labels
    alone: 16%; tests/learning/test_decision_math.py).
    """
    decision = test.decide(correct)
    if decision.outcome != "benign" or not looks_hurt(estimate, test.reference_accuracy, decision,
                                                      settings.label_free_drop):
        return decision, False
    cap = max(test.max_labels, min(settings.disputed_labels, available))  # a sample of max_labels rows: they decide
    return dataclasses.replace(test, max_labels=cap).decide(correct), True


def looks_hurt(estimate: float, reference_accuracy: float, decision: HarmDecision, drop: float) -> bool:
    """A benign call disputed: the label-free (DoC) estimate is more than `drop` below the
    reference and the harm test's own labels do not contradict it.

    40 labels cannot tell 0.92 from 0.96 (P(>= 39 of 40 right | 0.92) ~ 0.16: the harm test
    adopted a contrast x0.5 round at 0.92, reference 0.99, as benign). DoC reads accuracy off the
    fall in confidence and saw that round at 0.90. It is one-sided on purpose: a confident-and-
    wrong shift (inverted digits) fools it upwards, so it only ever disputes a benign call.
    And it is not trusted alone: where the model's confidence falls much further than its
    accuracy (an MLP on contrast x0.5: DoC 0.85, true 0.94) the labels say so, since that
    many right answers would be unlikely (below LABELS_CONTRADICT) at the estimated accuracy.
    """
    if not estimate < reference_accuracy - drop or decision.labels == 0:
        return False
    hits = int(round(decision.accuracy * decision.labels))
    return stats.binom.sf(hits - 1, decision.labels, estimate) >= LABELS_CONTRADICT


def monitor(center: DataCenter, snapshot: Snapshot, probabilities: np.ndarray, labels: np.ndarray,
            metadata: dict) -> tuple[detectors.Verdict, detectors.Verdict | None, bool]:
    """The gate: the current window; after a benign adoption also the model's original window.
    Returns (verdict, the original window's verdict or None, whether this flag is a confirmation).

    The original window flags only when the data has moved significantly further from it than
    the shift that was adopted (its statistic exceeds the adopted one by the test's critical
    distance): a drift that creeps on from an adopted shift can still be caught, while the
    benign shift itself does not flag every round.

    Except once: a shift adopted on a harm test's labels (`unconfirmed`) is flagged the next
    time the original window tells it apart while the adopted one does not, and tested again on
    fresh labels. At 40 labels the test cannot tell a 2-point drop from a 5-point one (MNIST's
    rotate 15, 5.6 points down, passes 28% of the time); adopted for good at once, a harmful
    shift then went unflagged round after round. Two looks pass it 8% of the time; a benign
    shift that persists pays one more test, not one a round (and at 1 point down is retrained
    by one of them 50% of the time instead of 29%: HarmTest.operating_characteristic).
    """
    own = snapshot.references[snapshot.current]
    if snapshot.monitor_ref is None:
        return detect(center, own, probabilities, labels, metadata), None, False
    adopted = detect(center, snapshot.monitor_ref, probabilities, labels, metadata)
    original = detect(center, own, probabilities, labels, metadata)
    if adopted.drift or not original.drift:
        return adopted, original, False
    margin = critical_distance(len(own), len(probabilities), center.settings.datacenter.alpha / own.shape[1])
    if original.statistic > (snapshot.adopted_statistic or 0.0) + margin:
        return original, original, False
    confirming = snapshot.unconfirmed and center.settings.datacenter.harm_check.confirm
    return (original if confirming else adopted), original, confirming


def recognised(center: DataCenter, snapshot: Snapshot, images: np.ndarray) -> tuple[str, float] | None:
    """(sha256, p-value) of the zoo model to whose own window the sample looks most alike, if the
    gate's p-value against that window is at least MIN_HOME_P.

    A model's own window is its outputs on the data it was fit to (the base: the held-out source
    split; an adapted model: the random sample of its episode, which no query touched), so a
    sample it does not tell apart from that window is its own data again: the model is as good
    here as it was there. A switch back then costs no label, instead of a harm test the new
    model would fail against the base model's clean accuracy and an episode that starts from it.

    The current model counts too once a benign shift was adopted (the gate then watches the
    adopted window, not its own): its own data coming back is adopted home, its own window
    restored, instead of a harm test that spent 40 labels to call it benign.

    An adapted model's window needs a second witness (`base_tells_apart`): a model fit to a shift
    reads a harsher one of its kind as it reads its own, and MNIST's rotate-15 model was adopted for
    rotate 30 at 0.905-0.917 held out (0.94 of the ceiling), for no label.
    """
    best = None
    for entry in snapshot.zoo:
        own_watched = entry.sha256 == snapshot.current and snapshot.monitor_ref is None
        if own_watched or entry.sha256 not in snapshot.references:
            continue
        verdict = own_window_test(center, snapshot, entry.sha256, images)
        if not is_own_data(center, verdict.p_value) or (best is not None and verdict.p_value <= best[1]):
            continue
        if not base_tells_apart(center, snapshot, entry, images):
            best = (entry.sha256, float(verdict.p_value))
    return best


def base_tells_apart(center: DataCenter, snapshot: Snapshot, entry: ZooEntry, images: np.ndarray) -> bool:
    """The base model's gate (KS at alpha) tells its outputs on `images` from its outputs on the random
    sample of the episode that made `entry` (kept in the state that opened it): not that model's data.
    False where there is no such sample (the base, a seed, a re-weighting, a state gone).

    The base was fit to neither, so a shift it reads differently shows in its outputs even where the
    adapted model, fit to undo the shift, reads both alike (on MNIST rotate 30 costs the base about
    three times the accuracy rotate 15 does; the rotate-15 model read both at 0.92-0.96)."""
    if entry.episode is None:
        return False
    try:
        data = center.store.load(entry.episode).data
    except StateError:
        return False
    if data is None:
        return False
    base = center.model(snapshot.zoo[0].sha256)
    return detectors.ks_softmax_test(predict_proba(base, center.as_images(data.post_x)), predict_proba(base, images),
                                     center.settings.datacenter.alpha).drift


def failed_episode_window(center: DataCenter, snapshot: Snapshot, probabilities: np.ndarray) -> float | None:
    """The gate's p-value against the random sample of the episode that just rolled back, if it
    is at least MIN_HOME_P: the same data the current model's episode could not improve on.

    `probabilities`: the current model's outputs on the sample. An episode that rolls back spent
    its whole budget and no fine-tune beat the model on labels it did not train on; opening
    another on the same data spends as much again for the same answer (MNIST's rotate 15: 100
    labels, 0.91 -> 0.91, twice). So the flag is reported (`unrecovered`) without a label until
    the data moves away from that sample.
    """
    episode, data = snapshot.episode, snapshot.data
    if episode is None or data is None or episode.iterations == 0 or episode.best is not None:
        return None
    window = predict_proba(center.model(snapshot.current), center.as_images(data.post_x))
    verdict = detectors.ks_softmax_test(window, probabilities, center.settings.datacenter.alpha)
    return float(verdict.p_value) if is_own_data(center, verdict.p_value) else None


def is_own_data(center: DataCenter, p_value: float) -> bool:
    """A sample whose p-value against a window is this high is taken for that window's data again:
    at least MIN_HOME_P, and never below the gate's alpha."""
    return p_value >= max(MIN_HOME_P, center.settings.datacenter.alpha)


def base_takes_over(center: DataCenter, snapshot: Snapshot, source_probabilities: np.ndarray,
                    images: np.ndarray) -> bool:
    """Back on the source, the base replaces a current model within the tolerance there (adopted by
    `source_model`, for no label) if its own gate is quiet on the sample and it reads the labelled
    held-out source rows at least as well as the current model (`source_probabilities`), for a
    specialist, or better beyond chance (a one-sided sign test, at the gate's alpha, on the rows
    exactly one of the two gets right), for any other model.

    The burden of proof differs because a specialist is made for its shift: on the source it warps
    the inputs it reads more surely warped, and slightly different data finds it out. On MNIST's
    mixed scenario (seed 3, 04020db) a rotate-15 model (MNIST's rotations are routed by confidence)
    was kept on clean digits at 0.936 held out, the base at 0.961, and thicker strokes then took it
    to 0.885 (the base 0.928), passed as the source for no label. A specialist whose fine-tuned
    weights read the source better than the base is kept. For other models the sign test keeps noise
    from trading them away: on scikit-learn's digits (180 source rows) a model within the tolerance
    is at most 3 rows worse, which it never calls.
    """
    # the labelled rows first (the base's source view is cached: `reference_accuracy` reads it on every
    # check); the base's gate, a forward pass on the sample, only where they favour the base
    base_probabilities, labels = center.source_view(snapshot.zoo[0].sha256)
    base_right, own_right = base_probabilities.argmax(1) == labels, source_probabilities.argmax(1) == labels
    gains, losses = int(np.sum(base_right & ~own_right)), int(np.sum(own_right & ~base_right))
    if is_specialist(center.model(snapshot.current)):
        better = gains >= losses
    else:
        alpha = center.settings.datacenter.alpha
        better = gains > losses and stats.binomtest(gains, gains + losses, 0.5, alternative="greater").pvalue < alpha
    return better and quiet_base_witness(center, snapshot, images) is not None


def source_model(center: DataCenter, snapshot: Snapshot, images: np.ndarray) -> tuple[str, float] | None:
    """(sha256, p-value) of the base model when the current one sees source data it is unfit for
    and the base's own outputs are not told apart from its source window either (the gate's alpha).

    Two witnesses that the data is the source again, where the base is by definition at the
    reference. Without this an adapted model back on (nearly) clean data opened an episode:
    the benchmark's rotate-15 model on noise 0.125 spent 60 labels for 0.944 -> 0.953 held
    out, where the base stood at 0.969.
    """
    witness = quiet_base_witness(center, snapshot, images)
    return None if witness is None else (witness[0], float(witness[1].p_value))


def specialist_watch(center: DataCenter, snapshot: Snapshot, images: np.ndarray) -> detectors.Verdict | None:
    """A flag when the current model is a specialist (its input adapter fitted, not routed by the pixels) and the
    base model's own gate does not tell the sample from its source window (p >= alpha); else None.

    A specialist shifts every input back by its episode's shift, so on the source it is as wrong
    as the base was on that shift, and its own gate may stay quiet (a rotate-15 specialist on
    noisy clean digits: 0.84, not flagged). The base's monitor is the second witness: the shift
    that made the specialist was one the base told apart from its source. Blind where the base's
    gate flags the data too (blur 0.5 on clean digits: the specialist at 0.80 went by).
    """
    if not is_specialist(center.model(snapshot.current)):
        return None
    witness = quiet_base_witness(center, snapshot, images)
    return None if witness is None else detectors.Verdict(True, witness[1].p_value, witness[1].statistic,
                                                          "specialist_watch")


def quiet_base_witness(center: DataCenter, snapshot: Snapshot, images: np.ndarray) -> tuple[str, detectors.Verdict] | None:
    """(sha256, the base model's own gate on `images`) when that gate is quiet (p >= alpha); None when
    it flags the sample, or the base is current or has no window."""
    base = snapshot.zoo[0].sha256
    if base == snapshot.current or base not in snapshot.references:
        return None
    verdict = own_window_test(center, snapshot, base, images)
    return None if verdict.drift else (base, verdict)


def own_window_test(center: DataCenter, snapshot: Snapshot, sha: str, images: np.ndarray) -> detectors.Verdict:
    """The gate's KS test of model `sha`'s outputs on `images` against its own window."""
    return detectors.ks_softmax_test(snapshot.references[sha], predict_proba(center.model(sha), images),
                                     center.settings.datacenter.alpha)


def critical_distance(n: int, m: int, alpha: float) -> float:
    """The two-sample KS distance significant at `alpha` for sizes n and m (asymptotic)."""
    return float(np.sqrt(-0.5 * np.log(alpha / 2.0) * (n + m) / (n * m)))


def detect(center: DataCenter, reference: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, metadata: dict) -> detectors.Verdict:
    config = center.settings.datacenter
    observation = detectors.Observation(reference, probabilities, labels, config,
                                        rng_for(center.settings.seed, "mmd", metadata.get("round")))
    try:
        return detectors.DETECTORS[config.detector].run(observation)
    except ValueError as exc:  # e.g. a labelled detector given no labels
        raise RequestError(str(exc)) from exc


def label_shift_weights(center: DataCenter, sha: str, probabilities: np.ndarray) -> np.ndarray | None:
    """Class weights q(y)/p(y) if a label-prior shift alone explains the sample's outputs, else None.

    Weights by BBSE from the model's confusion matrix on held-out source data. A label shift
    needs the predicted classes' mix to differ from the source's beyond sampling noise (a
    chi-square test at alpha: on a false alarm the weights are noise), and is explained when
    the source outputs, re-weighted by class, are no longer told apart from the sample's.
    """
    source_probabilities, source_labels = center.source_view(sha)
    n_classes = center.dataset.n_classes
    predicted = probabilities.argmax(1)
    expected = np.bincount(source_probabilities.argmax(1), minlength=n_classes) + 0.5  # smoothed source mix
    observed = np.bincount(predicted, minlength=n_classes)
    _, p_value = stats.chisquare(observed, expected / expected.sum() * observed.sum())
    if p_value >= center.settings.datacenter.alpha:
        return None
    confusion = confusion_matrix(source_probabilities.argmax(1), source_labels, n_classes)
    weights = bbse_weights(confusion, predicted, n_classes)
    if float(np.max(np.abs(weights - 1.0))) < MIN_PRIOR_CHANGE:
        return None
    drift, _, _ = weighted_ks_test(source_probabilities, weights[source_labels], probabilities,
                                   center.settings.datacenter.alpha)
    return None if drift else weights


def adopt(center: DataCenter, key: str, snapshot: Snapshot, candidate: str, probabilities: np.ndarray,
          statistic: float, frame: Any, metadata: dict, unconfirmed: bool = False) -> tuple[str, Snapshot]:
    """The child state after a benign flag: the candidate current, its outputs here the new normal.

    `unconfirmed`: the call rests on one harm test, to be repeated once if `harm_check.confirm`
    (`monitor`). Recorded whatever that setting says, so that a state's content depends only on
    its key's inputs."""
    round_id = str(metadata.get("round"))
    child_key = state_key(key, round_id, "normal", frame_digest(frame))
    if candidate == snapshot.current:  # same model: monitor the adopted window, keep its own as the second
        return child_key, Snapshot(key, round_id, "normal", candidate, snapshot.zoo, None, snapshot.references,
                                   probabilities, None, statistic, unconfirmed)
    shift = str(frame["shift"].iloc[0])
    entry = ZooEntry(candidate, round_id, snapshot.current, None, shift, 0)
    zoo = snapshot.zoo if candidate in {e.sha256 for e in snapshot.zoo} else snapshot.zoo + (entry,)
    return child_key, Snapshot(key, round_id, "normal", candidate, zoo, None,
                               {**snapshot.references, candidate: probabilities}, None, None)
