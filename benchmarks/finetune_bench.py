"""How close one episode's model gets to the ceiling, by labels and recipe -> benchmarks/results/finetune.md.

    python benchmarks/finetune_bench.py [--dataset digits|mnist] [--seeds 6] [--labels 20,40,60,100] [--jobs 2]

Issue 10 asks every harmful round to end at >= 95% of the ceiling (a fine-tune on ~540 labelled
stream rows of the shift). The loop benchmark (learning_bench.py) sees each round once, through a
chain whose labels depend on every round before; this one isolates the fine-tune. Per seed (the
loop benchmark's `World`: the same split, base model and ceiling) and harmful shift, a batch of
200 stream rows carries the shift: its first 100 are the random sample (unlabelled: the router
and self-training see them), and `k` uniformly drawn rows of the other 100 are labelled. Every
recipe gets the same rows and goes through `datacenter.adaptation.adapt`, the function the data
center's `retraining` calls; recipes differ only in `datacenter.finetune` settings. Accuracy is
held out: the whole evaluation split under the shift (and clean, for forgetting). Differences
are paired by (seed, shift), with a 95% t-interval.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from datacenter.adaptation import adapt
from learning_bench import ROT15, ROT30, INVERT, World, shipped_config
from mlcore.atomic import write_bytes_atomic
from mlcore.seeding import make_deterministic, rng_for
from mlcore.shifts import apply_image_shifts, parse_shift_list, shift_tag

#: The harmful shifts of the loop benchmark's scenarios (default and mixed).
SHIFTS = (ROT15, ROT30, ROT15 + [{"name": "thicker"}], [{"name": "thicker"}], INVERT)
#: Recipes: overrides of the shipped `datacenter.finetune` settings.
RECIPES = {
    "shipped": {},
    "replay 400": {"replay": 400},
    "replay 800": {"replay": 800},
    "self-training at 0.8": {"pseudo_confidence": 0.8},
    "epochs x2": {"epochs_factor": 2},
    "lr x2": {"lr_factor": 2},
    "no self-training": {"pseudo_confidence": 0.0},
    "no input adapter": {"input_adapter": False},
    "no confidence routing": {"route_by_confidence": False},
}
BATCH, SAMPLE = 200, 100
TARGET_SHARE = 0.95


def recipe_settings(shipped, overrides: dict):
    """The shipped settings with a recipe's overrides; `epochs_factor` and `lr_factor` scale the shipped value."""
    overrides = dict(overrides)
    for name in ("epochs", "lr"):
        factor = overrides.pop(f"{name}_factor", None)
        if factor:
            overrides[name] = type(getattr(shipped, name))(getattr(shipped, name) * factor)
    return dataclasses.replace(shipped, **overrides)


def run_seed(job: tuple) -> list[dict]:
    """Every (shift, labels, recipe) of one seed, in a process of its own with --jobs > 1."""
    raw, seed, labels, recipes = job
    make_deterministic()
    started = time.monotonic()
    out = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        world = World(raw, seed, Path(tmp), False)
        shipped = world.settings.datacenter.finetune
        for shift in SHIFTS:
            shifts, tag = parse_shift_list(shift), shift_tag(parse_shift_list(shift))
            rng = rng_for(seed, "finetune-bench", tag)
            rows = rng.choice(world.splits.stream, size=BATCH, replace=False)
            x = apply_image_shifts(world.dataset.images[rows], shifts, rng).reshape(BATCH, -1).astype(np.float32)
            y = world.dataset.labels[rows]
            sample, pool = x[:SAMPLE], np.arange(SAMPLE, BATCH)
            order = rng.permutation(pool)  # uniform labels, nested: the first k of one order
            ceiling, before = world.ceiling(shift), world.held_out(world.base_model, shift)
            for k in labels:
                chosen = np.sort(order[:k])
                for name in recipes:
                    began = time.monotonic()
                    adapted = adapt(world.base_model, x[chosen], y[chosen], sample, sample, world.dataset, world.splits,
                                    recipe_settings(shipped, RECIPES[name]), seed, f"finetune-bench:{tag}:{k}")
                    after = world.held_out(adapted.model, shift)
                    out.append({"seed": seed, "shift": tag, "labels": k, "recipe": name, "after": after,
                                "ceiling": ceiling, "share": after / ceiling, "clean": world.held_out(adapted.model, []),
                                "before": before, "pseudo": adapted.pseudo_labels,
                                "seconds": time.monotonic() - began})
        print(f"  seed {seed}: {len(out)} fits in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def interval(values: list[float]) -> str:
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return f"{x.mean():+.3f}"
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():+.3f} [{x.mean() - half:+.3f}, {x.mean() + half:+.3f}]"


def report(records: list[dict], args, seconds: float) -> str:
    labels = sorted({r["labels"] for r in records})
    recipes = [name for name in RECIPES if any(r["recipe"] == name for r in records)]
    seeds = sorted({r["seed"] for r in records})
    key = {(r["seed"], r["shift"], r["labels"], r["recipe"]): r for r in records}
    units = sorted({(r["seed"], r["shift"]) for r in records})
    lines = [f"# Fine-tune benchmark ({args.dataset}, one episode's model against the ceiling)", "",
             f"Generated by `python benchmarks/finetune_bench.py --dataset {args.dataset} --seeds {args.seeds} "
             f"--labels {args.labels}" + (f' --recipes "{args.recipes}"' if args.recipes != ",".join(RECIPES) else "")
             + f" --jobs {args.jobs}` in {seconds:.0f} s; seeds {seeds}. "
             "Each row: the model `datacenter.adaptation.adapt` trains from the base model on k uniform labels of "
             f"a {BATCH}-row shifted batch ({SAMPLE} of its rows the unlabelled random sample), held-out accuracy "
             "under the shift divided by the ceiling (a fine-tune on every stream row under the shift, the loop "
             "benchmark's, mean of 3 training seeds). "
             f"Units: (seed, shift), {len(units)} of them: shifts {', '.join(sorted({u[1] for u in units}))}. "
             "Differences are paired by unit, with a 95% t-interval.", "",
             f"## Share of the ceiling by labels (below {TARGET_SHARE:.2f}: the issue's per-round target missed)", "",
             "| recipe | " + " | ".join(f"k={k}: mean share, below {TARGET_SHARE:.2f}" for k in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for name in recipes:
        cells = []
        for k in labels:
            shares = [key[(s, t, k, name)]["share"] for s, t in units if (s, t, k, name) in key]
            cells.append(f"{statistics.fmean(shares):.3f}, {sum(v < TARGET_SHARE for v in shares)} of {len(shares)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Each recipe against the shipped one (paired: same rows, same labels)", "",
              "| recipe | labels | held out under the shift − shipped | clean (forgetting) − shipped | seconds per fit |",
              "|---|---|---|---|---|"]
    for name in recipes[1:]:
        for k in labels:
            pairs = [(key[(s, t, k, name)], key[(s, t, k, "shipped")]) for s, t in units
                     if (s, t, k, name) in key and (s, t, k, "shipped") in key]
            lines.append(f"| {name} | {k} | {interval([a['after'] - b['after'] for a, b in pairs])} | "
                         f"{interval([a['clean'] - b['clean'] for a, b in pairs])} | "
                         f"{statistics.fmean(a['seconds'] for a, _ in pairs):.1f} |")
    lines += ["", "## By shift (shipped recipe: mean share of the ceiling over seeds; the lowest in brackets)", "",
              "| shift | before / ceiling | " + " | ".join(f"k={k}" for k in labels) + " |",
              "|---|---|" + "---|" * len(labels)]
    for tag in sorted({u[1] for u in units}):
        shipped = [r for r in records if r["shift"] == tag and r["recipe"] == "shipped"]
        cells = []
        for k in labels:
            shares = [r["share"] for r in shipped if r["labels"] == k]
            cells.append(f"{statistics.fmean(shares):.3f} ({min(shares):.3f})")
        before = statistics.fmean(r["before"] / r["ceiling"] for r in shipped)
        lines.append(f"| {tag} | {before:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--labels", default="20,40,60,100", help="uniform labels per fit (at most 100)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="which recipes, comma-separated")
    parser.add_argument("--jobs", type=int, default=2, help="seeds run in parallel processes")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    labels = [int(k) for k in args.labels.split(",")]
    recipes = [name for name in args.recipes.split(",") if name]
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown or "shipped" not in recipes or not all(1 <= k <= BATCH - SAMPLE for k in labels):
        parser.error(f"recipes from {list(RECIPES)} including 'shipped' (got {recipes}); labels 1-{BATCH - SAMPLE}")
    raw, _ = shipped_config(args.dataset)
    jobs = [(raw, seed, labels, recipes) for seed in range(args.seeds)]
    started = time.monotonic()
    if args.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            outputs = list(pool.map(run_seed, jobs))
    else:
        outputs = [run_seed(job) for job in jobs]
    text = report([r for out in outputs for r in out], args, time.monotonic() - started)
    print(text)
    out = Path(args.out or f"benchmarks/results/finetune{'-mnist' if args.dataset == 'mnist' else ''}.md")
    write_bytes_atomic(out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
