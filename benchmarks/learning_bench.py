"""Learning-quality benchmark on the real digits data -> benchmarks/results/learning.md.

    python benchmarks/learning_bench.py [--seeds 5] [--out benchmarks/results/learning.md]

Measures, over several seeds (mean ± sd), with the production code paths (EdgeRound talking
in process to DataCenter.handle; the same finetune() the data center runs):
1. trigger: false alarms per stable round, detection delay for harmful shifts, trigger rate
   on the negative controls, labels spent on monitoring;
2. active learning after rotate 15°: labels to reach 95% of the full-retrain ceiling, every
   strategy next to uniform;
3. forgetting: clean-source accuracy before and after a real retraining episode;
4. selection: after a switch back, how often the model adapted earlier to that distribution wins.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time

import numpy as np

from datacenter.adaptation import finetune
from datacenter.base import train_base
from datacenter.service import DataCenter
from datacenter.state import StateStore
from edge.round_runner import EdgeRound
from edge.strategies import STRATEGIES, select_queries
from mlcore.atomic import write_bytes_atomic
from mlcore.checkpoints import load_checkpoint
from mlcore.contract import in_process
from mlcore.datasets import load_digits_dataset, split_dataset
from mlcore.rounds import parse_round
from mlcore.seeding import make_deterministic, rng_for
from mlcore.settings import settings_from_dict
from mlcore.shifts import apply_image_shifts, parse_shift_list
from mlcore.training import accuracy, embed, predict_proba

ROT15 = [{"name": "rotate", "degrees": 15}]
HARMFUL = {"rotate15": ROT15, "rotate15+thicker": ROT15 + [{"name": "thicker"}], "invert": [{"name": "invert"}]}
CONTROLS = {"contrast x0.5": [{"name": "contrast", "factor": 0.5}], "noise sigma 2/16": [{"name": "noise", "sigma": 0.125}]}


def mean_sd(values: list[float], fmt: str = "{:.3f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)}"


class World:
    """One seed: data, a trained base model and an in-process data center over a temp state dir."""

    def __init__(self, seed: int, overrides: dict | None = None) -> None:
        raw = {"seed": seed}
        for section, values in (overrides or {}).items():
            raw[section] = values
        self.settings = settings_from_dict(raw)
        self.digits = load_digits_dataset()
        self.splits = split_dataset(self.digits, self.settings.dataset, seed)
        self.tmp = tempfile.TemporaryDirectory()
        self.store = StateStore(self.tmp.name)
        self.base = train_base(self.settings, self.digits, self.splits, self.store)
        self.center = DataCenter(self.settings, self.digits, self.splits, self.store)

    def with_settings(self, **sections) -> "World":
        clone = object.__new__(World)
        clone.__dict__.update(self.__dict__)
        clone.settings = dataclasses.replace(self.settings, **sections)
        clone.center = DataCenter(clone.settings, self.digits, self.splits, self.store)
        return clone

    def round(self, round_id: str, shift: list, previous: dict):
        spec = parse_round({"id": round_id, "shift": shift})
        store = self.store.root.parent / f"{self.store.root.name}-edge"
        return asyncio.run(EdgeRound(self.settings, self.digits, self.splits, spec, previous,
                                     in_process(self.center.handle), store).run())


def bench_trigger(world: World, stable_rounds: int, shifted_rounds: int) -> dict:
    """Every round starts from the base model; monitoring-only settings (no retraining)."""
    monitor = world.with_settings(edge=dataclasses.replace(world.settings.edge, max_iterations=0),
                                  datacenter=dataclasses.replace(world.settings.datacenter, selection="label_free"))
    stable = [monitor.round(f"stable{i:03d}", [], world.base) for i in range(stable_rounds)]
    out = {"false_alarm_rate": float(np.mean([r.metrics["flagged"] for r in stable])),
           "monitoring_labels": sum(r.metrics["labels_used"] for r in stable)}
    for name, shift in {**HARMFUL, **CONTROLS}.items():
        flags = [monitor.round(f"shift{list({**HARMFUL, **CONTROLS}).index(name)}-{j}", shift, world.base).metrics["flagged"] for j in range(shifted_rounds)]
        out[f"rate:{name}"] = float(np.mean(flags))
        out[f"delay:{name}"] = flags.index(True) if True in flags else None
    return out


def bench_controls_with_target(world: World, target: float) -> dict:
    """Two chained rounds per shift with datacenter.target_accuracy set: labels spent on a
    harmless shift (negative control) vs a harmful one."""
    relaxed = world.with_settings(datacenter=dataclasses.replace(world.settings.datacenter, target_accuracy=target))
    out = {}
    for index, (name, shift) in enumerate({**CONTROLS, "rotate15": ROT15}.items()):
        first = relaxed.round(f"target{index}-0", shift, world.base)
        second = relaxed.round(f"target{index}-1", shift, first.checkpoint)
        out[name] = {"labels": first.metrics["labels_used"] + second.metrics["labels_used"],
                     "flags": int(first.metrics["flagged"]) + int(second.metrics["flagged"]),
                     "retrained": int(first.metrics["retrained"]) + int(second.metrics["retrained"]),
                     "after": second.metrics["accuracy_after"]}
    return out


def bench_active(world: World, budgets: list[int], strategies: tuple[str, ...]) -> dict:
    """Query 10 at a time from the rotated stream; fine-tune from the base on all labels + replay."""
    s, d, sp = world.settings, world.digits, world.splits
    base_model, _ = load_checkpoint(world.base["checkpoint"], world.base["sha256"])
    rotate = parse_shift_list(ROT15)
    pool_x = apply_image_shifts(d.images[sp.stream], rotate, rng_for(s.seed, "bench-pool"))
    pool_y = d.labels[sp.stream]
    test_x = apply_image_shifts(d.images[sp.evaluation], rotate, rng_for(s.seed, "bench-test"))
    test_y = d.labels[sp.evaluation]
    ft = s.datacenter.finetune

    def tuned(rows: np.ndarray, tag: str, settings=ft):
        return finetune(base_model, pool_x[rows].reshape(len(rows), -1), pool_y[rows], d, sp, settings, s.seed, tag)

    # the ceiling: every stream row labelled, trained at least as long as the base model
    full = dataclasses.replace(ft, epochs=max(ft.epochs, s.model.epochs))
    ceiling = accuracy(tuned(np.arange(len(pool_y)), "ceiling", full), test_x, test_y)
    out = {"ceiling": ceiling, "base_rotated": accuracy(base_model, test_x, test_y), "curves": {}}
    for strategy in strategies:
        model, labelled, curve = base_model, np.zeros(0, dtype=np.int64), []
        for step, budget in enumerate(budgets):
            probs = predict_proba(model, pool_x)
            emb = embed(model, pool_x) if strategy in ("kcenter", "badge") else None
            new = select_queries(strategy, probs, budget - len(labelled), rng_for(s.seed, "bench-query", strategy, step),
                                 labelled=labelled, embeddings=emb)
            labelled = np.concatenate([labelled, new])
            model = tuned(labelled, f"{strategy}-{budget}")
            curve.append(accuracy(model, test_x, test_y))
        out["curves"][strategy] = curve
    return out


def labels_to_reach(curve: list[float], budgets: list[int], target: float) -> int | None:
    for budget, acc in zip(budgets, curve):
        if acc >= target:
            return budget
    return None


def bench_forgetting_and_selection(world: World) -> dict:
    """Rounds: clean, rotate 30, invert, rotate 30 (switch back), invert (switch back)."""
    d, sp = world.digits, world.splits
    base_model, _ = load_checkpoint(world.base["checkpoint"], world.base["sha256"])
    clean_before = accuracy(base_model, d.images[sp.evaluation], d.labels[sp.evaluation])
    rot30 = [{"name": "rotate", "degrees": 30}]
    inv = [{"name": "invert"}]
    r1 = world.round("c01", [], world.base)
    r2 = world.round("c02", rot30, r1.checkpoint)
    adapted, _ = load_checkpoint(r2.checkpoint["checkpoint"], r2.checkpoint["sha256"])
    clean_after = accuracy(adapted, d.images[sp.evaluation], d.labels[sp.evaluation])
    r3 = world.round("c03", inv, r2.checkpoint)
    r4 = world.round("c04", rot30, r3.checkpoint)
    r5 = world.round("c05", inv, r4.checkpoint)
    picks = []
    for back, earlier in ((r4, r2), (r5, r3)):
        if back.metrics["flagged"] and earlier.metrics["retrained"]:
            picks.append(back.metrics["selected_checkpoint"] == earlier.checkpoint["sha256"])
    rounds = [r1, r2, r3, r4, r5]
    return {"clean_before": clean_before, "clean_after": clean_after, "picks": picks,
            "labels": [r.metrics["labels_used"] for r in rounds],
            "acc": [(r.metrics["accuracy_before"], r.metrics["accuracy_after"]) for r in rounds],
            "seconds": [r.checkpoint["seconds"] for r in rounds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--stable-rounds", type=int, default=40)
    parser.add_argument("--shifted-rounds", type=int, default=5)
    parser.add_argument("--max-labels", type=int, default=150)
    parser.add_argument("--target-accuracy", type=float, default=0.9)
    parser.add_argument("--out", default="benchmarks/results/learning.md")
    args = parser.parse_args(argv)
    make_deterministic()
    started = time.monotonic()
    budgets = list(range(10, args.max_labels + 1, 10))
    seeds = list(range(args.seeds))
    trig, active, flow, sel_methods, targets = [], [], [], {}, []
    for seed in seeds:
        world = World(seed)
        print(f"seed {seed}: base eval accuracy {world.base['metrics']['eval_accuracy']:.3f}", file=sys.stderr)
        trig.append(bench_trigger(world, args.stable_rounds, args.shifted_rounds))
        targets.append(bench_controls_with_target(world, args.target_accuracy))
        active.append(bench_active(world, budgets, STRATEGIES))
        flow.append(bench_forgetting_and_selection(world))
        for method in ("leep", "label_free"):
            other = World(seed, {"datacenter": {"selection": method}})
            sel_methods.setdefault(method, []).append(bench_forgetting_and_selection(other))
        print(f"seed {seed} done at {time.monotonic() - started:.0f} s", file=sys.stderr)
    sel_methods = {"logme": flow, **sel_methods}

    lines = [
        "# Learning benchmark (digits, real data)",
        "",
        f"Generated by `python benchmarks/learning_bench.py --seeds {args.seeds}` in {time.monotonic() - started:.0f} s "
        f"on 2 CPU cores; seeds {seeds}; mean ± sd over seeds. Default config (CNN, KS on softmax with "
        "Bonferroni, alpha 0.01, margin queries of 10, LogME selection with 10 labels, fine-tuning for "
        f"{settings_from_dict({}).datacenter.finetune.epochs} "
        "epochs with a replay of 200 source samples). Every figure comes from the production code paths: `EdgeRound` talking in process to "
        "`DataCenter.handle`, and the data center's own `finetune()`.",
        "",
        "## 1. Trigger (label-free KS on softmax outputs; each round 100 unlabelled samples vs the reference window)",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
    ]
    far = [t["false_alarm_rate"] for t in trig]
    lines.append(f"| false alarms per stable round ({args.stable_rounds} rounds × {len(seeds)} seeds) | {mean_sd(far)} | ≤ 0.02 | "
                 f"{'yes' if statistics.mean(far) <= 0.02 else 'NO'} |")
    for name in HARMFUL:
        delays = [t[f"delay:{name}"] for t in trig]
        missed = sum(x is None for x in delays)
        met = missed == 0 and all(x <= 1 for x in delays)
        lines.append(f"| detection delay, {name} (rounds after the switch; 0 = first shifted round) | "
                     f"{mean_sd([x for x in delays if x is not None], '{:.2f}')}, missed {missed}/{len(seeds)}; "
                     f"per-round detection rate {mean_sd([t[f'rate:{name}'] for t in trig], '{:.2f}')} | ≤ 1 round | "
                     f"{'yes' if met else 'NO'} |")
    for name in CONTROLS:
        lines.append(f"| trigger rate on {name} (negative control: accuracy barely drops) | "
                     f"{mean_sd([t[f'rate:{name}'] for t in trig], '{:.2f}')} | low (no labels wasted) | see note |")
    monitoring = sum(t["monitoring_labels"] for t in trig)
    lines.append(f"| labels spent on monitoring ({args.stable_rounds * len(seeds)} rounds) | {monitoring} | 0 | "
                 f"{'yes' if monitoring == 0 else 'NO'} |")

    lines += ["", f"KS compares output distributions, so it also fires on contrast x0.5, which lowers the "
              "confidence of correct predictions without hurting accuracy. With `datacenter.target_accuracy` set "
              f"(here {args.target_accuracy}), the data center checks the chosen start model on the selection labels "
              "and, if it is accurate enough, adopts the new outputs as the reference without an episode. Two chained "
              "rounds per shift (labels in total; rounds flagged / retrained of 2; accuracy after round 2):", "",
              "| shift | labels over 2 rounds | flagged | retrained | accuracy after |", "|---|---|---|---|---|"]
    for name in targets[0]:
        lines.append(f"| {name} | {mean_sd([t[name]['labels'] for t in targets], '{:.1f}')} | "
                     f"{mean_sd([t[name]['flags'] for t in targets], '{:.1f}')} | "
                     f"{mean_sd([t[name]['retrained'] for t in targets], '{:.1f}')} | "
                     f"{mean_sd([t[name]['after'] for t in targets])} |")

    lines += ["", "## 2. Active learning after rotate 15° (10 labels per query round; fine-tune from the base on "
              "all labels so far + 200 replay samples)", ""]
    ceilings = [a["ceiling"] for a in active]
    lines.append(f"Full-retrain ceiling (all stream rows labelled, fine-tuned for max(finetune, base) epochs): {mean_sd(ceilings)}; "
                 f"base model on rotated data: {mean_sd([a['base_rotated'] for a in active])}; target = 95% of the "
                 "ceiling, per seed. Labels needed (mean ± sd; a seed that never reaches the target within "
                 f"{args.max_labels} labels counts as {args.max_labels + 10}):")
    lines += ["", "| strategy | labels to 95% of ceiling | reached | accuracy at 30 / 60 / 100 labels |", "|---|---|---|---|"]
    needed: dict[str, list[int]] = {}
    for strategy in STRATEGIES:
        values, reached = [], 0
        for a in active:
            n = labels_to_reach(a["curves"][strategy], budgets, 0.95 * a["ceiling"])
            reached += n is not None
            values.append(n if n is not None else args.max_labels + 10)
        needed[strategy] = values
        at = [mean_sd([a["curves"][strategy][budgets.index(b)] for a in active]) if b in budgets else "n/a" for b in (30, 60, 100)]
        lines.append(f"| {strategy} | {mean_sd(values, '{:.0f}')} | {reached}/{len(seeds)} | {' / '.join(at)} |")
    best = min((s for s in STRATEGIES if s != "uniform"), key=lambda s: statistics.mean(needed[s]))
    ratio = statistics.mean(needed["uniform"]) / statistics.mean(needed[best])
    lines += ["", f"Best strategy: **{best}** with {statistics.mean(needed[best]):.0f} labels "
              f"(target ≤ 60: {'met' if statistics.mean(needed[best]) <= 60 else 'NOT met'}); uniform needs "
              f"{statistics.mean(needed['uniform']):.0f}: ratio {ratio:.2f}x (target ≥ 1.6x: "
              f"{'met' if ratio >= 1.6 else 'NOT met'})."]

    lines += ["", "## 3. Forgetting (a real retraining episode on rotate 30°: margin queries, up to 60 labels)", ""]
    drops = [f["clean_before"] - f["clean_after"] for f in flow]
    lines += ["| clean-source accuracy before | after adaptation | drop (points) | target | met |", "|---|---|---|---|---|",
              f"| {mean_sd([f['clean_before'] for f in flow])} | {mean_sd([f['clean_after'] for f in flow])} | "
              f"{mean_sd([100 * x for x in drops], '{:.1f}')} | ≤ 3 points | "
              f"{'yes' if statistics.mean(drops) <= 0.03 else 'NO'} |"]

    lines += ["", "## 4. Selection after a switch back", "",
              "Rounds: clean, rotate 30° (adapted model A), invert (adapted model B), rotate 30° again (A should "
              "win), invert again (B should win). A pick counts when the switch-back round was flagged and the "
              "earlier round had retrained.", "",
              "| selection | right earlier model chosen | target | met |", "|---|---|---|---|"]
    for method, runs in sel_methods.items():
        picks = [p for r in runs for p in r["picks"]]
        rate = float(np.mean(picks)) if picks else float("nan")
        lines.append(f"| {method}{' (default)' if method == 'logme' else ''} | {sum(picks)}/{len(picks)} = {rate:.2f} | "
                     f"≥ 0.90 | {'yes' if rate >= 0.9 else 'NO'} |")
    lines += ["", "Per-round accuracy before → after and labels (default config, seed 0): "
              + "; ".join(f"{b:.2f}→{a:.2f} ({n} labels, {t:.1f} s)" for (b, a), n, t in
                          zip(flow[0]["acc"], flow[0]["labels"], flow[0]["seconds"])), ""]
    text = "\n".join(lines) + "\n"
    write_bytes_atomic(args.out, text.encode("utf-8"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
