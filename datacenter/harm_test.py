"""Is a flagged shift harmful? A truncated SPRT on uniformly random labels.

A drift flag says the outputs moved, not that accuracy fell (review finding 7), and a point
estimate from 10 labels adopts a harmful shift one time in five (finding 1). So, after a flag,
rows are labelled uniformly at random, `batch` at a time, and Wald's sequential probability
ratio test decides between H0 "benign" (accuracy >= reference - tolerance) and H1 "harmful"
(accuracy <= reference - harm) with error rates of about `alpha` (benign called harmful: a
needless retrain) and `beta` (harmful called benign: a silent accuracy loss).

The test looks only at batch boundaries (multiples of `batch`, and `max_labels`), and stops at
the first boundary that crosses a Wald limit, so the answer depends on the labels in the order
they were drawn, not on how many the edge happened to send at once. At `max_labels` it is
truncated: benign only if the accuracy reached H0's level (`truncation_accuracy`). It is also
curtailed: once so many labels are wrong that no rest of them could make it benign, it says
harmful at once: the same answer as the whole test, on fewer labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

# p0 near 1 makes a single error decisive (log((1 - p1) / (1 - p0)) explodes), p1 near 0
# makes a single correct label decisive: keep both where one label cannot settle the test.
MAX_BENIGN_ACCURACY = 0.995
MIN_HARMFUL_ACCURACY = 0.01
MIN_GAP = 0.005  # p1 at most p0 - MIN_GAP, so a correct label always favours "benign"

OUTCOMES = ("benign", "harmful", "more")


@dataclass(frozen=True)
class HarmDecision:
    outcome: str  # "benign" | "harmful" | "more"
    labels: int  # labels looked at (the last batch boundary reached)
    accuracy: float  # their accuracy (nan if 0 labels)
    log_ratio: float  # log likelihood ratio of H1 (harmful) vs H0 (benign)
    wanted: int  # labels the next step needs when "more" (labels + batch, capped at max_labels), else labels


@dataclass(frozen=True)
class HarmTest:
    reference_accuracy: float  # the model's accuracy where it is in its element
    tolerance: float = 0.02  # H0 benign: acc >= reference - tolerance
    harm: float = 0.10  # H1 harmful: acc <= reference - harm
    alpha: float = 0.05  # P(call benign harmful)
    beta: float = 0.01  # P(call harmful benign)
    batch: int = 5
    max_labels: int = 40

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < self.harm:
            raise ValueError(f"harm_check: need 0 <= tolerance < harm, got {self.tolerance}, {self.harm}")
        if not (0.0 < self.alpha < 1.0 and 0.0 < self.beta < 1.0 and self.alpha + self.beta < 1.0):
            raise ValueError(f"harm_check: need 0 < alpha, beta and alpha + beta < 1, got {self.alpha}, {self.beta}")
        if self.batch < 1 or self.max_labels < self.batch:
            raise ValueError(f"harm_check: need 1 <= batch <= max_labels, got {self.batch}, {self.max_labels}")

    @classmethod
    def from_settings(cls, reference_accuracy: float, settings) -> "HarmTest":
        """From anything with the attribute names of mlcore.settings.HarmCheckSettings."""
        return cls(reference_accuracy=float(reference_accuracy), tolerance=settings.tolerance, harm=settings.harm,
                   alpha=settings.alpha, beta=settings.beta, batch=settings.batch, max_labels=settings.max_labels)

    @property
    def p0(self) -> float:
        """Accuracy under H0 (benign), clipped so that one error cannot decide alone."""
        return float(np.clip(self.reference_accuracy - self.tolerance, MIN_HARMFUL_ACCURACY + MIN_GAP,
                             MAX_BENIGN_ACCURACY))

    @property
    def p1(self) -> float:
        """Accuracy under H1 (harmful), clipped and kept below p0."""
        return float(np.clip(self.reference_accuracy - self.harm, MIN_HARMFUL_ACCURACY, self.p0 - MIN_GAP))

    @property
    def upper(self) -> float:
        """Wald's A: declare harmful at or above it."""
        return math.log((1.0 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        """Wald's B: declare benign at or below it."""
        return math.log(self.beta / (1.0 - self.alpha))

    @property
    def truncation_accuracy(self) -> float:
        """At max_labels, benign iff the accuracy reaches p0: not shown benign is treated as harmful.

        Wald's error rates hold only for an untruncated test; at a cap of 40 labels the test
        usually ends at the cap, and a midpoint rule there called a 10-point drop benign 22%
        of the time. Asking the estimate to reach H0's level cuts that to 9% (a 15-point drop:
        2%), at the price of retraining 12% of rounds whose accuracy did not fall at all
        (operating characteristic in benchmarks/results/learning.md and the tests).
        """
        return self.p0

    def boundaries(self) -> np.ndarray:
        """The label counts at which the test looks: multiples of batch, then max_labels."""
        steps = list(range(self.batch, self.max_labels, self.batch))
        return np.asarray([*steps, self.max_labels], dtype=np.int64)

    def _doomed(self, labels: np.ndarray, correct: np.ndarray, ratios: np.ndarray) -> np.ndarray:
        """Whether the test can only end harmful, whatever the remaining labels say (curtailment).
        `ratios`: `_log_ratios(labels, correct)`, which every caller has already computed.

        Even with every later label right, the accuracy at `max_labels` stays below
        `truncation_accuracy` and no later boundary reaches Wald's benign limit. At reference 0.97
        a 10-point drop settles after 24 labels on average instead of 35, a 5-point one after 32
        instead of 39 (`operating_characteristic`), and every decision is the same.
        """
        remaining = self.max_labels - labels
        best_accuracy = (correct + remaining) / self.max_labels
        best_ratio = ratios + remaining * math.log(self.p1 / self.p0)
        return (best_accuracy < self.truncation_accuracy) & (best_ratio > self.lower)

    def _log_ratios(self, labels: np.ndarray, correct: np.ndarray) -> np.ndarray:
        """log LR of H1 vs H0 after `labels` labels of which `correct` were right."""
        wrong = labels - correct
        return correct * math.log(self.p1 / self.p0) + wrong * math.log((1.0 - self.p1) / (1.0 - self.p0))

    def decide(self, correct: np.ndarray) -> HarmDecision:
        """The decision at the first batch boundary that settles it, or "more".

        `correct` is one bool per labelled row in the order the rows were drawn; labels past
        the boundary that settles the test, or past the last complete batch, are not used.
        """
        correct = np.asarray(correct, dtype=bool).ravel()
        hits = np.concatenate([[0], np.cumsum(correct)])
        looks = self.boundaries()
        looks = looks[looks <= len(correct)]
        ratios = self._log_ratios(looks, hits[looks])
        settled = np.flatnonzero((ratios >= self.upper) | (ratios <= self.lower) | (looks == self.max_labels)
                                 | self._doomed(looks, hits[looks], ratios))
        if len(settled) == 0:
            seen = int(looks[-1]) if len(looks) else 0
            accuracy = hits[seen] / seen if seen else math.nan
            ratio = float(ratios[-1]) if len(looks) else 0.0
            return HarmDecision("more", seen, float(accuracy), ratio, min(seen + self.batch, self.max_labels))
        seen, ratio = int(looks[settled[0]]), float(ratios[settled[0]])
        accuracy = float(hits[seen] / seen)
        if ratio >= self.upper:
            outcome = "harmful"
        elif ratio <= self.lower or accuracy >= self.truncation_accuracy:
            outcome = "benign"
        else:
            outcome = "harmful"
        return HarmDecision(outcome, seen, accuracy, ratio, seen)

    def operating_characteristic(self, true_accuracy: float) -> tuple[float, float]:
        """(P(benign), expected labels) when each label is right with probability true_accuracy.

        Exact, by carrying the distribution of the number correct from boundary to boundary:
        the simulation tests check `decide` against it, and tuning can use it without sampling.
        """
        alive = np.array([1.0])  # P(still undecided, k correct so far), k = 0..seen
        seen, benign, expected = 0, 0.0, 0.0
        for boundary in self.boundaries():
            step = int(boundary) - seen
            alive = np.convolve(alive, stats.binom.pmf(np.arange(step + 1), step, true_accuracy))
            seen = int(boundary)
            k = np.arange(seen + 1)
            labels = np.full(seen + 1, seen)
            ratio = self._log_ratios(labels, k)
            if seen == self.max_labels:
                says_benign = (ratio <= self.lower) | ((ratio < self.upper) & (k / seen >= self.truncation_accuracy))
                stop = np.ones(seen + 1, dtype=bool)
            else:
                says_benign = ratio <= self.lower
                stop = says_benign | (ratio >= self.upper) | self._doomed(labels, k, ratio)
            benign += float(alive[says_benign].sum())
            expected += seen * float(alive[stop].sum())
            alive = np.where(stop, 0.0, alive)
        return benign, expected
