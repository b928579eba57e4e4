"""What other harm-test settings would trade on a learning benchmark's own flagged rounds.

    python benchmarks/harm_test_frontier.py NAME=RUN.json[,RUN.json ...] [...] [--streams 2000] [--out PATH]

RUN.json: what `learning_bench.py --parts A --json` writes; NAME groups runs (a dataset). Issue 10
asks for no retraining of a benign round at <= 15 labels, and at most 1% of harmful rounds adopted:
harm-test-limits.md shows that no test on a few dozen labels does both at the class boundaries.
This asks how far the benchmark's actual rounds are from those boundaries. Every round of the
default policy that the state check's harm test decided (flagged, benign or harmful, labels
spent on the check, not a label-shift re-weighting: that tests another model) is taken with its
held-out accuracy before the round as the truth, and `--streams` label streams are drawn for it
and run through `check.harm_decision` (the production test, DoC dispute included, with the round's
own estimate) under each setting of SETTINGS. The same draws serve every setting (paired). The
intervals are 95% percentile intervals of a bootstrap over the runs' seeds (a seed's rounds are
one chain, so they are resampled together): they say how much the set of rounds decides the figure.

Chains are not followed: what a different call saves or costs in later rounds is not in these
figures, nor are the labels of an episode after a harmful call; settings past 100 labels assume a
random sample that large (the shipped edge sends 100 rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dispute_expectation import default_records  # noqa: E402
from datacenter.check import harm_decision  # noqa: E402
from datacenter.harm_test import HarmTest  # noqa: E402
from mlcore.settings import HarmCheckSettings  # noqa: E402

SHIPPED = HarmCheckSettings()
BOOTSTRAP = 2000  # resamples of the chains
#: (name, the harm_check settings): the shipped test, then one change each.
SETTINGS = (
    ("shipped", SHIPPED),
    ("no DoC dispute", dataclasses.replace(SHIPPED, label_free_drop=1.0)),
    ("tolerance 0.03", dataclasses.replace(SHIPPED, tolerance=0.03)),
    ("beta 0.05", dataclasses.replace(SHIPPED, beta=0.05)),
    ("max_labels 20 (dispute to 40)", dataclasses.replace(SHIPPED, max_labels=20, disputed_labels=40)),
    ("max_labels 80 (dispute to 160)", dataclasses.replace(SHIPPED, max_labels=80, disputed_labels=160)),
    ("max_labels 200 (dispute to 400)", dataclasses.replace(SHIPPED, max_labels=200, disputed_labels=400)),
    # H1 at the harmful class's boundary: a longer test with harm 0.10 calls 6-point drops benign
    ("max_labels 80 (dispute to 160), harm 0.05", dataclasses.replace(SHIPPED, max_labels=80, disputed_labels=160,
                                                                     harm=0.05)),
    ("max_labels 200 (dispute to 400), harm 0.05", dataclasses.replace(SHIPPED, max_labels=200,
                                                                      disputed_labels=400, harm=0.05)),
    ("max_labels 500 (dispute to 1000), harm 0.05", dataclasses.replace(SHIPPED, max_labels=500,
                                                                       disputed_labels=1000, harm=0.05)),
)


@dataclasses.dataclass(frozen=True)
class TestedRound:
    truth: float  # held-out accuracy of the model entering the round, under its shift
    reference: float
    estimate: float  # DoC of the tested model (nan: none)
    harmful: bool  # else benign
    chain: str  # the run, scenario and seed it belongs to


def tested_rounds(paths: list[str]) -> tuple[list[TestedRound], dict[str, int]]:
    """The rounds the check's harm test decided, and the number of benign rounds in all, by chain."""
    rounds, benign = [], {}
    for name, scenario, seed, record in default_records(paths):
        chain = f"{name} {scenario} {seed}"
        benign[chain] = benign.get(chain, 0) + (record["class"] == "benign")
        if (not record["flagged"] or record["class"] == "mild" or not record["labels_check"]
                or record["decision"] == "label_shift"):
            continue
        estimate = record.get("estimate_candidate", record["doc"])
        rounds.append(TestedRound(record["before"], record["reference"],
                                  float("nan") if estimate is None else float(estimate),
                                  record["class"] == "harmful", chain))
    return rounds, benign


def outcomes(test_round: TestedRound, settings: HarmCheckSettings, draws: np.ndarray) -> tuple[float, float]:
    """(share of `draws` label streams called benign, mean labels), each row of `draws` a stream of
    uniform numbers (a label is right when its number is below the truth)."""
    test = HarmTest.from_settings(test_round.reference, settings)
    cap = max(settings.max_labels, settings.disputed_labels)
    benign = labels = 0
    for correct in draws[:, :cap] < test_round.truth:
        decision, _ = harm_decision(test, correct, test_round.estimate, settings, cap)
        benign += decision.outcome == "benign"
        labels += decision.labels
    return benign / len(draws), labels / len(draws)


def with_interval(numerators: np.ndarray, denominators: np.ndarray, picks: np.ndarray, digits: int) -> str:
    """sum(numerators) / sum(denominators), each array one entry per chain, and its interval over
    the bootstrap `picks` (one row of chain indices per resample)."""
    point = numerators.sum() / denominators.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = numerators[picks].sum(1) / denominators[picks].sum(1)
    low, high = np.nanpercentile(resampled, [2.5, 97.5])
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table(name: str, rounds: list[TestedRound], benign_by_chain: dict[str, int], streams: int,
          seed: int) -> list[str]:
    """One row per setting: benign rounds retrained, harmful rounds adopted, check labels."""
    rng = np.random.default_rng(seed)
    chains = sorted(benign_by_chain)
    member = np.zeros((len(chains), len(rounds)))  # chain x round: 1 where the round is the chain's
    for j, test_round in enumerate(rounds):
        member[chains.index(test_round.chain), j] = 1.0
    picks = rng.integers(0, len(chains), size=(BOOTSTRAP, len(chains)))
    benign_rounds = np.array([benign_by_chain[c] for c in chains], dtype=float)
    width = max(max(s.max_labels, s.disputed_labels) for _, s in SETTINGS)
    draws = [rng.random((streams, width)) for _ in rounds]
    tested_benign = sum(not r.harmful for r in rounds)
    tested_harmful = len(rounds) - tested_benign
    close = [i for i, r in enumerate(rounds) if r.harmful and r.reference - r.truth <= 0.10]
    lines = [f"### {name}: {tested_benign} benign and {tested_harmful} harmful rounds decided by the check's "
             f"harm test ({len(close)} of them 5-10 points down), {int(benign_rounds.sum())} benign rounds in all, "
             f"{len(chains)} chains", "",
             "| setting | benign tested: retrained | benign rounds: check labels on average (all, unflagged at 0) "
             "| harmful: adopted | harmful 5-10 points down: adopted | labels per tested round |",
             "|---|---|---|---|---|---|"]
    harmful = np.array([r.harmful for r in rounds], dtype=float)
    near = np.isin(np.arange(len(rounds)), close).astype(float)
    benign = 1.0 - harmful
    for label, settings in SETTINGS:
        results = [outcomes(r, settings, d) for r, d in zip(rounds, draws)]
        called = np.array([b for b, _ in results])
        spent = np.array([n for _, n in results])
        cells = [with_interval(member @ (benign * (1 - called)), member @ benign, picks, 3),
                 with_interval(member @ (benign * spent), benign_rounds, picks, 1),
                 with_interval(member @ (harmful * called), member @ harmful, picks, 4),
                 with_interval(member @ (near * called), member @ near, picks, 3),
                 with_interval(member @ spent, member.sum(1), picks, 1)]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="+", help="NAME=RUN.json[,RUN.json ...]")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started, lines = time.monotonic(), []
    for group in args.groups:
        name, _, paths = group.partition("=")
        if not paths:
            parser.error(f"{group!r}: want NAME=RUN.json[,RUN.json ...]")
        rounds, benign_by_chain = tested_rounds(paths.split(","))
        lines += table(name, rounds, benign_by_chain, args.streams, args.seed)
    header = ["# The harm test's settings on the benchmark's own rounds", "",
              f"Generated by `python benchmarks/harm_test_frontier.py {' '.join(args.groups)} --streams "
              f"{args.streams}` in {time.monotonic() - started:.0f} s (what each run is: the note below the "
              "tables). Expected shares over the label streams, each tested round weighted alike, with 95% "
              f"intervals of a bootstrap over the chains (a run's seed and scenario); the shipped "
              f"settings: max_labels {SHIPPED.max_labels}, tolerance {SHIPPED.tolerance}, harm {SHIPPED.harm}, "
              f"alpha {SHIPPED.alpha}, beta {SHIPPED.beta}, DoC dispute at {SHIPPED.label_free_drop} to "
              f"{SHIPPED.disputed_labels} labels.", ""]
    text = "\n".join(header + lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
