"""Expected outcomes of a disputed benign call, run on or overruled, over a learning benchmark's rounds.

    python benchmarks/dispute_expectation.py RUN.json [RUN.json ...] [--streams 4000]

RUN.json: what `learning_bench.py --parts A --json` writes. One benchmark run draws each round's
labels once, so a rare outcome (a harmful round adopted) either shows or does not. This takes every
flagged benign or harmful round of the default policy whose DoC estimate (`doc`) is more than
`harm_check.label_free_drop` below its reference (where a benign call would be disputed), treats the
round's held-out accuracy before it as the truth, and draws `--streams` label streams for it: the
share adopted by `check.harm_decision` (the test runs on to `disputed_labels`) and by the rule before
it (a disputed call overruled outright: `HarmTest.decide` then `check.looks_hurt`). Chains are not
followed: what a retrained model saves or costs later is not in these figures. Prints one line a
round and the expected adoptions by class (benign: the rest are retrained).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datacenter.check import harm_decision, looks_hurt  # noqa: E402
from datacenter.harm_test import HarmTest  # noqa: E402
from mlcore.settings import HarmCheckSettings  # noqa: E402


def adoption_shares(truth: float, reference: float, estimate: float, settings: HarmCheckSettings,
                    streams: int, rng: np.random.Generator) -> tuple[float, float]:
    """(run on, overruled): the share of label streams at accuracy `truth` adopted as benign."""
    test = HarmTest.from_settings(reference, settings)
    run_on = overruled = 0
    for correct in rng.random((streams, settings.disputed_labels)) < truth:
        run_on += harm_decision(test, correct, estimate, settings, settings.disputed_labels)[0].outcome == "benign"
        alone = test.decide(correct)
        overruled += alone.outcome == "benign" and not looks_hurt(estimate, reference, alone, settings.label_free_drop)
    return run_on / streams, overruled / streams


def default_records(paths: list[str]):
    """(run file name, scenario, seed, record) for every round of the default policy in `paths`."""
    for path in paths:
        for world in json.loads(Path(path).read_text())["results"]:
            for scenario, policies in world["policies"].items():
                for record in policies["default"]["records"]:
                    yield Path(path).name, scenario, world["seed"], record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--streams", type=int, default=4000)
    args = parser.parse_args()
    settings, rng, totals = HarmCheckSettings(), np.random.default_rng(0), {}
    for name, scenario, seed, record in default_records(args.runs):
        reference, estimate = record["reference"], record["doc"]
        if (not record["flagged"] or estimate is None or record["class"] == "mild"
                or not estimate < reference - settings.label_free_drop):
            continue
        run_on, overruled = adoption_shares(record["before"], reference, estimate, settings, args.streams, rng)
        count = totals.setdefault(record["class"], [0, 0.0, 0.0])
        count[0] += 1
        count[1] += run_on
        count[2] += overruled
        print(f"{name} {scenario} seed {seed} {record['id']} {record['tag']} {record['class']}: truth "
              f"{record['before'] - reference:+.3f}, DoC {estimate - reference:+.3f} from the reference; adopted: "
              f"run on {run_on:.3f}, overruled {overruled:.3f}")
    for name, (rounds, run_on, overruled) in sorted(totals.items()):
        print(f"{name}: {rounds} rounds; expected adopted: run on {run_on:.2f}, overruled {overruled:.2f}")


if __name__ == "__main__":
    main()
