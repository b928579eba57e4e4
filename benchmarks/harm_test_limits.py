"""What any test on n uniform labels can do at issue 10's boundaries -> benchmarks/results/harm-test-limits.md.

    python benchmarks/harm_test_limits.py [--out PATH]

Issue 10 calls a round benign at a drop of at most 2 points (no retraining wanted) and harmful
beyond 5 (none may be adopted as harmless: at most 1%). A round right at those boundaries is a
coin with accuracy reference - 0.02 or reference - 0.05, and a test may look at n of its labels.
By the Neyman-Pearson lemma the most powerful test of the one against the other counts the
right answers (randomised at the threshold), and any sequential test that looks at no more than
n labels is a test on n labels: so for each n this prints the least share of boundary-benign
rounds that must be retrained when boundary-harmful ones are adopted at most 1% of the time,
the labels both 1% and 5% need, and beside them the shipped harm test (`datacenter.harm_test`,
exact operating characteristic) at the same points and a few drops around them.
Exact binomial arithmetic: no sampling, no seed; it runs in about a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datacenter.harm_test import HarmTest  # noqa: E402
from mlcore.settings import HarmCheckSettings  # noqa: E402

BENIGN_DROP, HARMFUL_DROP = 0.02, 0.05  # issue 10's classes (benchmarks/learning_bench.py uses the same)
REFERENCES = (0.97, 0.985)  # the base models' held-out accuracy: digits 0.96-0.99, MNIST 0.96-0.97
LABELS = (40, 80, 200, 500, 1000, 2000)


def least_retraining(n: int, benign: float, harmful: float, adopt: float) -> float:
    """The smallest P(called harmful | accuracy `benign`) of any test on n labels whose
    P(called benign | accuracy `harmful`) is at most `adopt` (Neyman-Pearson, randomised)."""
    k = np.arange(n + 1)
    tail = stats.binom.sf(k, n, harmful)  # P(more than k right | harmful)
    c = int(np.argmax(tail <= adopt))  # the smallest threshold the budget allows
    gamma = min(1.0, (adopt - tail[c]) / stats.binom.pmf(c, n, harmful))  # benign at exactly c, this often
    called_benign = stats.binom.sf(c, n, benign) + gamma * stats.binom.pmf(c, n, benign)
    return float(1.0 - called_benign)


def labels_needed(benign: float, harmful: float, error: float) -> int:
    """The fewest labels with which some test keeps both errors at or below `error`."""
    low, high = 1, 1
    while least_retraining(high, benign, harmful, error) > error:
        low, high = high, high * 2
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if least_retraining(middle, benign, harmful, error) > error else (low, middle)
    return high


def tables() -> list[str]:
    """The report's body: the bound by labels, then the shipped test beside it."""
    settings = HarmCheckSettings()
    lines = [
        "Benign boundary: accuracy "
        f"reference − {BENIGN_DROP}; harmful boundary: reference − {HARMFUL_DROP} (issue 10's classes). "
        "The bound is the Neyman–Pearson test's (the most powerful of all tests on n labels, sequential ones "
        "that stop sooner included), allowed to adopt at most 1% of boundary-harmful rounds.",
        "",
        "## The least share of boundary-benign rounds retrained, by labels",
        "",
        "| reference | " + " | ".join(f"n = {n}" for n in LABELS) + " | labels for both errors ≤ 5% | ≤ 1% |",
        "|---" * (len(LABELS) + 3) + "|",
    ]
    for reference in REFERENCES:
        benign, harmful = reference - BENIGN_DROP, reference - HARMFUL_DROP
        cells = [f"{least_retraining(n, benign, harmful, 0.01):.3f}" for n in LABELS]
        lines.append(f"| {reference} | " + " | ".join(cells)
                     + f" | {labels_needed(benign, harmful, 0.05)} | {labels_needed(benign, harmful, 0.01)} |")
    lines += [
        "",
        f"## The shipped harm test (max_labels {settings.max_labels}, tolerance {settings.tolerance}, "
        f"harm {settings.harm}, alpha {settings.alpha}, beta {settings.beta})",
        "",
        "P(called benign) and the expected labels, by the drop from the reference (exact, "
        "`HarmTest.operating_characteristic`); the bound column is the Neyman–Pearson least retraining at "
        f"n = {settings.max_labels} for a test that adopts a 5-point drop as often as this one does.",
        "",
        "| reference | drop (points) | P(benign) | P(retrained) | expected labels | bound on P(retrained) at the same adoption |",
        "|---|---|---|---|---|---|",
    ]
    for reference in REFERENCES:
        test = HarmTest.from_settings(reference, settings)
        adopted_at_harm, _ = test.operating_characteristic(reference - HARMFUL_DROP)
        for drop in (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.10):
            benign, expected = test.operating_characteristic(reference - drop)
            bound = (least_retraining(settings.max_labels, reference - drop, reference - HARMFUL_DROP, adopted_at_harm)
                     if drop < HARMFUL_DROP else float("nan"))
            # a cross-check of both computations: no test on max_labels labels can beat the bound
            assert np.isnan(bound) or 1 - benign >= bound - 1e-9, (reference, drop, benign, bound)
            lines.append(f"| {reference} | {drop * 100:.0f} | {benign:.3f} | {1 - benign:.3f} | {expected:.1f} | "
                         + ("–" if np.isnan(bound) else f"{bound:.3f}") + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "harm-test-limits.md"))
    args = parser.parse_args()
    started = time.monotonic()
    body = tables()
    text = "\n".join(["# What a harm test can do at issue 10's boundaries (exact binomial arithmetic)", "",
                      f"Generated by `python benchmarks/harm_test_limits.py` in {time.monotonic() - started:.1f} s.",
                      *body]) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
