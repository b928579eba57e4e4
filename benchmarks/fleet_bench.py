"""Fleet benchmark (issue 11): 8 edges x 12 rounds, isolated edges against a shared zoo, through real Snakemake.

Prints a Markdown table and writes it to benchmarks/results/fleet.md. Measured in one run,
on this machine, for each seed, two arms on the same scenario and seed:

- isolation: `share_zoo: false`, each edge alone with its own lineage (the baseline);
- fleet: `share_zoo: true`, issue 11 items 4 and 5. Item 4, a shared zoo: another edge's
  adapted models are candidates when an edge chooses a start; an edge's round names as peers
  the same round's checkpoints of the edges listed before it in `edges` and the latest earlier
  checkpoints of the others, so the fleet's (edge, round) jobs run one after another. Item 5,
  one drift, one group training: when an edge's own labels choose as its start the model a
  peer's episode of the same round trained, its episode trains on that episode's labelled rows
  too (`pooled_labels`, not counted in `labels_used`).

Each arm is a real `snakemake --cores 2` in a temp copy of the workflow (Snakefile, workflow/,
config/, as tests/workflow/snakemake_workdir.py's make_workdir does), with the default
config/config.yaml except `seed`, `share_zoo` and the options below (the same for both arms),
and benchmarks/scenarios/fleet8x12.yaml as config/rounds.yaml.

Per arm, from results/edges/<edge>/rounds/<round>/metrics.json and logs/edges/<edge>/rounds/<round>.log:

- labels = Σ `labels_used` (uniform + queried; this edge's own labels, pooled rows excluded);
- pooled = Σ `pooled_labels` (a peer episode's rows an episode also trained on) and the
  number of rounds with `pooled_labels` > 0;
- fine-tunes = Σ `iterations` (one data-center fine-tune each); retrains = rounds with
  decision `retrain`; adoptions = decision `adopt`; `from_peer`, `reuse_spared_training` counts;
  episodes = rounds with at least one fine-tune;
- training seconds = Σ metrics.json `training_seconds`: the data center's fine-tune seconds
  for the round, summed over its retraining requests, timed inside the training slot (queue
  wait, validation and transfer excluded). Used for the ratio and the target. Cross-check,
  reported beside it: the edge log's time from "start from" (the start chosen) to the last
  "retraining N" reply, minus `queue_wait` (the fine-tunes plus validation and transfer; the
  figure the previous version of this script used, before metrics.json had `training_seconds`);
- accuracy = `accuracy_after`, held-out rows with the round's shift.

Paired per (seed, edge, round): fleet - isolation; 95% intervals by a cluster bootstrap that
resamples (seed, edge) chains (rounds of one edge are chained, not independent).

Workflow overhead (8 edges, 2 cores), per (edge, round) job, two ways:
- aggregate: (rounds phase wall - Σ job seconds / k) / jobs, rounds phase = from base.json's
  write to the last checkpoint.json write, job seconds = `seconds` in checkpoint.json (the
  edge's own round: handshake to reply, queue waits included), k = the most jobs whose own
  seconds overlapped, at most 2 cores (1 for the fleet arm, whose jobs form one chain);
- dispatch gap: per job, (its checkpoint write - its `seconds`) - the last output written
  before that (any job's checkpoint or base.json): Snakemake noticing, scheduling, the warm
  starter's fork, loading the dataset, drawing the batch, writing outputs.

Drift-check latency while training runs: benchmarks/datacenter_load_bench.py measures it;
this script runs it (`--no-write`) after the fleet runs and quotes its table.

The result ends with the previous run's figures (item 4 only, commit 7afb944), quoted from
the fleet.md that run wrote (PREVIOUS below), for comparison.

    python benchmarks/fleet_bench.py                 # 1 seed, both arms, then the load bench
    python benchmarks/fleet_bench.py --seeds 2 --skip-load
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from workflow_copy import copy_workflow

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "fleet.md"
SCENARIO = REPO / "benchmarks" / "scenarios" / "fleet8x12.yaml"
ARMS = {"isolation": False, "fleet": True}
CORES = 2
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) edge INFO round \S+: (start from|retraining \d+ with)")
GROUPS = {"A (a-d: rotate, same round)": "abcd", "B (e-h: translate, staggered)": "efgh"}

# The previous run, quoted for comparison (benchmarks/results/fleet.md as committed in b1aefa0: runs on
# 7afb944/b375c74, which differ only in localrules; item 4 only; training seconds from edge logs).
PREVIOUS = """## Previous run: item 4 only (commit 7afb944, quoted)

From benchmarks/results/fleet.md as committed in b1aefa0 (runs started on 7afb944; its header names b375c74,
the HEAD of its last collecting call, which only adds localrules). The fleet arm then had the shared zoo only
(peers = the other edges' checkpoints of *earlier* rounds only, so a round's 8 jobs could run 2 at a time)
and no pooling; training seconds were taken from edge-log timestamps (start chosen -> last retraining reply, minus queue
wait), not from metrics.json. 3 seeds, the same scenario and config.

| arm | snakemake wall s (per seed) | labels (uniform + queried) | fine-tunes | training s (logs) | retrains | adoptions | from_peer | reuse_spared_training | queue wait s | mean held-out acc after |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| isolation | 248.7 / 178.8 / 189.2 | 4575 (2115 + 2460) | 246 | 547.5 | 72 | 4 | 0 | 0 | 261.7 | 0.9100 |
| fleet (item 4) | 157.0 / 139.6 / 135.2 | 4545 (3045 + 1500) | 150 | 281.2 | 37 | 30 | 34 | 12 | 101.1 | 0.9273 |

| target | measured then | verdict then |
|---|---|---|
| labels <= 50% of isolation | 0.993 [0.896, 1.109] | **MISSED** |
| training seconds <= 50% of isolation | 0.514 [0.416, 0.630] (log-derived) | **MISSED** |
| fine-tunes ratio (no target) | 0.610 [0.512, 0.718] | |
| held-out accuracy equal or better | +0.0173 [+0.0083, +0.0271] | met |
| workflow overhead <= 0.5 s a round | aggregate 0.32 - 0.46 s (divided by 2 cores) / dispatch gap 0.48 - 0.62 s | met / **MISSED** in 5 of 6 runs |
| drift check p99 <= 100 ms while training | 161.2 ms (4 training edges) | **MISSED** |
| 0 lost replies | all 6 runs complete, clean data-center logs | met |

Same checkpoint in both arms then: 68 of 288 jobs.
"""


# ----------------------------------------------------------------------------- runs
def make_workdir(target: Path, seed: int, share: bool, overrides: dict) -> Path:
    copy_workflow(target, {"seed": seed, "share_zoo": share, **overrides})
    shutil.copy2(SCENARIO, target / "config/rounds.yaml")
    return target


def jobs_of(scenario: dict) -> list[tuple[str, str]]:
    """Every (edge, round) of the fleet scenario, edge by edge."""
    return [(edge, entry["id"]) for edge in scenario["edges"] for entry in scenario["rounds"]
            if edge in entry.get("only", [edge])]


def stamp(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as the file mtimes


def log_training_seconds(log_file: Path, queue_wait: float) -> float:
    """Cross-check only: the edge log's time from the chosen start to the last retraining reply, minus the queue wait."""
    times = [stamp(m.group(1)) for m in map(LOG_TIME.match, log_file.read_text().splitlines()) if m]
    return max(0.0, times[-1] - times[0] - queue_wait) if len(times) >= 2 else 0.0


def run_arm(workdir: Path, timeout: float) -> dict:
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(CORES)], cwd=workdir,
                            capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - started
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed in {workdir}:\n{result.stderr[-4000:]}")
    return {"wall": wall, "started": started}


def collect(workdir: Path, jobs: list[tuple[str, str]]) -> dict:
    """Every job's figures from its metrics.json, checkpoint.json and log."""
    rows = {}
    for edge, round_id in jobs:
        folder = workdir / f"results/edges/{edge}/rounds/{round_id}"
        metrics = json.loads((folder / "metrics.json").read_text())
        record = json.loads((folder / "checkpoint.json").read_text())
        assert metrics["round"] == round_id and record["round"] == round_id, (edge, round_id)
        log_train = log_training_seconds(workdir / f"logs/edges/{edge}/rounds/{round_id}.log", float(metrics["queue_wait"]))
        rows[(edge, round_id)] = {
            "labels": int(metrics["labels_used"]), "uniform": int(metrics["labels_uniform"]),
            "queried": int(metrics["labels_queried"]), "acc_before": float(metrics["accuracy_before"]),
            "acc": float(metrics["accuracy_after"]), "decision": metrics["decision"],
            "finetunes": int(metrics["iterations"]), "train_s": float(metrics["training_seconds"]),
            "train_s_log": log_train if metrics["iterations"] else 0.0,
            "pooled": int(metrics.get("pooled_labels") or 0),
            "queue_wait": float(metrics["queue_wait"]), "from_peer": bool(metrics["from_peer"]),
            "spared": bool(metrics["reuse_spared_training"]), "flagged": bool(metrics["flagged"]),
            "shift": metrics["shift"], "seconds": float(record["seconds"]),
            "written": (folder / "checkpoint.json").stat().st_mtime, "sha": record["sha256"],
        }
    base_written = (workdir / "results/models/base.json").stat().st_mtime
    dc_log = workdir / "logs/datacenter.log"
    dc_errors = sum(" ERROR " in line or "Traceback" in line for line in dc_log.read_text().splitlines()) \
        if dc_log.is_file() else -1
    return {"base": base_written, "rows": rows, "dc_errors": dc_errors,
            "summary_rows": sum(1 for _ in open(workdir / "results/summary.csv")) - 1}


def overhead(run: dict) -> dict:
    rows = list(run["rows"].values())
    end = max(r["written"] for r in rows)
    phase = end - run["base"]
    own = sum(r["seconds"] for r in rows)
    spans = sorted((r["written"] - r["seconds"], r["written"]) for r in rows)
    overlap = 1
    for i, (begin, end_i) in enumerate(spans):  # the most jobs whose own seconds overlap at one instant
        overlap = max(overlap, 1 + sum(1 for b, e in spans[:i] if e > begin + 1e-3))
    parallel = min(CORES, overlap)
    aggregate = (phase - own / parallel) / len(rows)
    finishes = sorted([run["base"]] + [r["written"] for r in rows])
    gaps = []
    for r in rows:
        began = r["written"] - r["seconds"]
        before = [f for f in finishes if f <= began + 1e-6]
        gaps.append(began - before[-1] if before else float("nan"))
    return {"phase": phase, "own": own, "parallel": parallel, "aggregate": aggregate, "gap_mean": statistics.fmean(gaps),
            "gap_p90": float(np.percentile(gaps, 90)), "until_base": run["base"] - run["started"],
            "after": run["started"] + run["wall"] - end}


# ----------------------------------------------------------------------------- statistics
def totals(rows: list[dict]) -> dict:
    n = len(rows)
    return {"labels": sum(r["labels"] for r in rows), "uniform": sum(r["uniform"] for r in rows),
            "queried": sum(r["queried"] for r in rows), "train_s": sum(r["train_s"] for r in rows),
            "train_s_log": sum(r["train_s_log"] for r in rows),
            "pooled": sum(r["pooled"] for r in rows), "pooled_rounds": sum(r["pooled"] > 0 for r in rows),
            "episodes": sum(r["finetunes"] > 0 for r in rows),
            "finetunes": sum(r["finetunes"] for r in rows), "acc": sum(r["acc"] for r in rows) / n,
            "retrains": sum(r["decision"] == "retrain" for r in rows),
            "adopts": sum(r["decision"] == "adopt" for r in rows),
            "from_peer": sum(r["from_peer"] for r in rows), "spared": sum(r["spared"] for r in rows),
            "flagged": sum(r["flagged"] for r in rows), "queue_wait": sum(r["queue_wait"] for r in rows), "n": n}


def bootstrap(runs: dict, keys: list, statistic, resamples: int = 4000, seed: int = 12345) -> tuple[float, float, float]:
    """statistic(iso_rows, fleet_rows) on all pairs, and a 95% interval resampling (seed, edge) chains."""
    chains = sorted({(s, e) for s, e, _ in keys})
    by_chain = {c: [k for k in keys if (k[0], k[1]) == c] for c in chains}

    def value(selected):
        picked = [k for c in selected for k in by_chain[c]]
        return statistic([runs["isolation"][k] for k in picked], [runs["fleet"][k] for k in picked])

    point = value(chains)
    rng = np.random.default_rng(seed)
    draws = [value([chains[i] for i in rng.integers(0, len(chains), len(chains))]) for _ in range(resamples)]
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def ratio(field):
    return lambda iso, fleet: (sum(r[field] for r in fleet) / sum(r[field] for r in iso)) if sum(r[field] for r in iso) else float("nan")


def mean_diff(field):
    return lambda iso, fleet: statistics.fmean(f[field] - i[field] for i, f in zip(iso, fleet))


# ----------------------------------------------------------------------------- report
def fmt_ci(point, low, high, digits=3, sign=False):
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(point)} [{f.format(low)}, {f.format(high)}]"


def report(results: dict, seeds: list[int], overrides: dict, load_text: str | None, elapsed: float,
           spent: float, commit: str, reused: list[str]) -> str:
    runs = {arm: {(s, e, r): row for s in seeds for (e, r), row in results[s][arm]["rows"].items()} for arm in ARMS}
    keys = sorted(runs["isolation"])
    tot = {arm: totals([runs[arm][k] for k in keys]) for arm in ARMS}
    label_ratio = bootstrap(runs, keys, ratio("labels"))
    train_ratio = bootstrap(runs, keys, ratio("train_s"))
    train_log_ratio = bootstrap(runs, keys, ratio("train_s_log"))
    finetune_ratio = bootstrap(runs, keys, ratio("finetunes"))
    acc_diff = bootstrap(runs, keys, mean_diff("acc"))
    shifted = [k for k in keys if runs["isolation"][k]["shift"] != "none"]
    acc_diff_shifted = bootstrap(runs, shifted, mean_diff("acc"))
    label_diff = bootstrap(runs, keys, mean_diff("labels"))
    train_diff = bootstrap(runs, keys, mean_diff("train_s"))
    same = sum(runs["isolation"][k]["sha"] == runs["fleet"][k]["sha"] for k in keys)
    overheads = {(s, arm): overhead(results[s][arm]) for s in seeds for arm in ARMS}
    measures = {"aggregate": [o["aggregate"] for o in overheads.values()],
                "dispatch gap": [o["gap_mean"] for o in overheads.values()]}
    expected = len(jobs_per_run(results))
    clean = [(s, arm) for s in seeds for arm in ARMS
             if len(results[s][arm]["rows"]) == expected and results[s][arm]["summary_rows"] == expected
             and results[s][arm]["dc_errors"] == 0]
    lost_ok = len(clean) == len(seeds) * len(ARMS)
    p99 = re.search(r"\| drift check p99 <= (\d+) ms while a training runs \| ([\d.]+) ms \|", load_text or "")

    def per_seed(arm, field, digits=1):
        return " / ".join(f"{results[s][arm][field]:.{digits}f}" for s in seeds)

    lines = [
        "# Fleet benchmark (issue 11: 8 edges x 12 rounds, isolation vs shared zoo + group training)", "",
        f"`python benchmarks/fleet_bench.py {' '.join(sys.argv[1:])}`".replace(" `", "`") +
        f" on {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, commit {commit}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; seeds {seeds}; the benchmark took "
        f"{spent / 60:.1f} min ({2 * len(seeds)} snakemake runs + the load bench)"
        + (f"; this call {elapsed / 60:.1f} min, reusing {', '.join(reused)} from an earlier call with the same `--keep`"
           if reused else "") + ".", "",
        "Each arm is a real `snakemake --cores 2` in a temp copy of the workflow: config/config.yaml (digits, CNN, "
        "30 fine-tune epochs, `trainings: 1`, warm starter) with `seed` and `share_zoo` set"
        + (f" and {', '.join(f'`{k}: {v}`' for k, v in overrides.items())} (both arms)" if overrides else "")
        + "; config/rounds.yaml = `benchmarks/scenarios/fleet8x12.yaml`:", "",
        "```",
        "       r01 r02 r03 r04 r05 r06 r07 r08 r09 r10 r11 r12     R = rotate 15, T = translate (1, 1)",
        " a-d    .   .   R   R   R   .   .   R   .   T   .   .      group A: same onset",
        " e,f    .   .   .   T   T   T   .   .   T   .   R   .      group B: staggered onset",
        " g,h    .   .   .   .   T   T   .   .   T   .   R   .",
        "```", "",
        "- **isolation**: `share_zoo: false`, each edge chooses its start among its own lineage's models only.",
        "- **fleet**: `share_zoo: true`, issue 11 items 4 and 5. Item 4: the other edges' models are candidates "
        "too; an edge's round names the same round's checkpoints of the edges listed before it in `edges` and the "
        "latest earlier ones of the others, so the fleet's 96 jobs run one after another. Item 5: when an edge's own "
        "labels choose as its start the model a peer's episode of the same round trained, its episode also trains on "
        "that episode's labelled rows (`pooled_labels`; not counted in `labels_used`, never validated on).",
        "- **training seconds** = Σ metrics.json `training_seconds` (the data center's fine-tune seconds in the "
        "training slot, summed over a round's retrainings; no queue wait, validation or transfer); used for the "
        "ratio and the target. `log s` = the previous script's figure, from edge-log timestamps (start chosen -> "
        "last retraining reply, minus queue wait), kept as a cross-check.", "",
        f"## Per arm (totals over {len(seeds)} seed(s) x 96 (edge, round) jobs)", "",
        "| arm | snakemake wall s (per seed) | labels (uniform + queried) | pooled labels (rounds that pooled) | "
        "fine-tunes | episodes | training s | log s (cross-check) | retrains | adoptions | from_peer | "
        "reuse_spared_training | flagged | queue wait s | mean held-out acc after | jobs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        t = tot[arm]
        lines.append(f"| {arm} | {per_seed(arm, 'wall')} | {t['labels']} ({t['uniform']} + {t['queried']}) | "
                     f"{t['pooled']} ({t['pooled_rounds']}) | {t['finetunes']} | {t['episodes']} | {t['train_s']:.1f} | "
                     f"{t['train_s_log']:.1f} | {t['retrains']} | {t['adopts']} | {t['from_peer']} | {t['spared']} | "
                     f"{t['flagged']} | {t['queue_wait']:.1f} | {t['acc']:.4f} | {t['n']} |")
    overhead_worst = {name: max(values) for name, values in measures.items()}
    lines += [
        "", "## Targets (issue 11), plainly", "",
        "| target | measured | verdict |", "|---|---|---|",
        f"| labels <= 50% of isolation | {label_ratio[0]:.1%} [{label_ratio[1]:.1%}, {label_ratio[2]:.1%}] | "
        f"{'met' if label_ratio[0] <= 0.5 else '**MISSED**'} |",
        f"| training seconds <= 50% of isolation | {train_ratio[0]:.1%} [{train_ratio[1]:.1%}, {train_ratio[2]:.1%}] | "
        f"{'met' if train_ratio[0] <= 0.5 else '**MISSED**'} |",
        f"| held-out accuracy equal or better | {acc_diff[0]:+.4f} [{acc_diff[1]:+.4f}, {acc_diff[2]:+.4f}] | "
        f"{'met' if acc_diff[0] >= 0 else '**MISSED**'}{' (interval includes 0)' if acc_diff[1] <= 0 <= acc_diff[2] else ''} |",
        f"| workflow overhead <= 0.5 s a round (per job; aggregate / dispatch gap, worst run) | "
        f"{overhead_worst['aggregate']:.2f} s / {overhead_worst['dispatch gap']:.2f} s | "
        + " / ".join("met" if v <= 0.5 else "**MISSED**" for v in overhead_worst.values()) + " |",
        "| drift check p99 <= 100 ms while training (load bench, worst load) | "
        + (f"{float(p99.group(2)):.1f} ms | {'met' if float(p99.group(2)) <= float(p99.group(1)) else '**MISSED**'} |"
           if p99 else "not measured | - |"),
        f"| 0 lost or mixed-up replies | {len(clean)} of {len(seeds) * len(ARMS)} runs complete and clean"
        f"{'; load bench completed' if p99 else ''} | {'met' if lost_ok and p99 else ('met (fleet runs)' if lost_ok else '**MISSED**')} |",
        "", "## Paired, fleet against isolation (per (seed, edge, round); 95% interval: bootstrap over (seed, edge) "
        "chains, 4000 resamples)", "",
        "| measure | fleet / isolation or fleet - isolation | target | verdict |", "|---|---|---|---|",
        f"| labels, total ratio | {fmt_ci(*label_ratio)} | <= 0.50 | {'met' if label_ratio[0] <= 0.5 else '**MISSED**'} |",
        f"| training seconds (metrics.json `training_seconds`), total ratio | {fmt_ci(*train_ratio)} | <= 0.50 | "
        f"{'met' if train_ratio[0] <= 0.5 else '**MISSED**'} |",
        f"| training seconds from edge logs (cross-check), total ratio | {fmt_ci(*train_log_ratio)} | | |",
        f"| fine-tunes, total ratio (load-independent) | {fmt_ci(*finetune_ratio)} | | |",
        f"| held-out accuracy after, mean difference, all rounds | {fmt_ci(*acc_diff, digits=4, sign=True)} | >= 0 | "
        f"{'met' if acc_diff[0] >= 0 else '**MISSED**'}{' (interval includes 0)' if acc_diff[1] <= 0 <= acc_diff[2] else ''} |",
        f"| held-out accuracy after, mean difference, shifted rounds ({len(shifted)}) | "
        f"{fmt_ci(*acc_diff_shifted, digits=4, sign=True)} | | |",
        f"| labels per job, mean difference | {fmt_ci(*label_diff, digits=2, sign=True)} | | |",
        f"| training seconds per job, mean difference | {fmt_ci(*train_diff, digits=2, sign=True)} | | |",
        "", f"Same checkpoint in both arms: {same} of {len(keys)} jobs.", "",
    ]
    # per group and per timeline round
    lines += ["## By group", "", "| group | arm | labels | pooled labels (rounds) | fine-tunes | episodes | training s | "
              "from_peer | reuse_spared | mean acc after | mean acc after, shifted rounds |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, members in GROUPS.items():
        for arm in ARMS:
            sel = [runs[arm][k] for k in keys if k[1] in members]
            t = totals(sel)
            sh = [r["acc"] for r in sel if r["shift"] != "none"]
            lines.append(f"| {name} | {arm} | {t['labels']} | {t['pooled']} ({t['pooled_rounds']}) | {t['finetunes']} | "
                         f"{t['episodes']} | {t['train_s']:.1f} | {t['from_peer']} | "
                         f"{t['spared']} | {t['acc']:.4f} | {statistics.fmean(sh):.4f} |")
    timeline = sorted({k[2] for k in keys})
    lines += ["", "## By timeline round (all edges, all seeds; isolation / fleet)", "",
              "| round | labels | fine-tunes | episodes | training s | decisions isolation | decisions fleet | "
              "from_peer (fleet) | pooled labels (rounds), fleet | mean acc before | mean acc after |",
              "|---|---|---|---|---|---|---|---:|---:|---|---|"]
    for rid in timeline:
        ks = [k for k in keys if k[2] == rid]
        iso, fl = [runs["isolation"][k] for k in ks], [runs["fleet"][k] for k in ks]

        def decisions(rows):
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["decision"]] = counts.get(r["decision"], 0) + 1
            return ", ".join(f"{d} {c}" for d, c in sorted(counts.items()))

        lines.append(
            f"| {rid} | {sum(r['labels'] for r in iso)} / {sum(r['labels'] for r in fl)} | "
            f"{sum(r['finetunes'] for r in iso)} / {sum(r['finetunes'] for r in fl)} | "
            f"{sum(r['finetunes'] > 0 for r in iso)} / {sum(r['finetunes'] > 0 for r in fl)} | "
            f"{sum(r['train_s'] for r in iso):.1f} / {sum(r['train_s'] for r in fl):.1f} | {decisions(iso)} | "
            f"{decisions(fl)} | {sum(r['from_peer'] for r in fl)} | "
            f"{sum(r['pooled'] for r in fl)} ({sum(r['pooled'] > 0 for r in fl)}) | "
            f"{statistics.fmean(r['acc_before'] for r in iso):.3f} / {statistics.fmean(r['acc_before'] for r in fl):.3f} | "
            f"{statistics.fmean(r['acc'] for r in iso):.3f} / {statistics.fmean(r['acc'] for r in fl):.3f} |")
    # overhead
    lines += ["", "## Workflow overhead at 8 edges on 2 cores", "",
              "Aggregate = (rounds phase - Σ job seconds / k) / 96 jobs; rounds phase = base.json written -> last "
              "checkpoint.json written; job seconds = checkpoint.json `seconds` (the edge's own round, queue waits "
              "included); k = the most jobs whose own seconds overlapped, at most 2 (the fleet arm's jobs form one "
              "chain, so k = 1 there; the previous version divided by 2 always). Dispatch gap = per job, its start of own work (checkpoint write - `seconds`) - the last "
              "output written before it: Snakemake's scheduling, the warm starter's fork, dataset load and batch "
              "drawing, output writing. Per timeline round = per job x 8.", "",
              "| seed | arm | snakemake wall s | until base s | rounds phase s | Σ job seconds | after last round s | k | "
              "aggregate overhead s/job | per timeline round s | dispatch gap mean s/job | p90 | jobs ok | summary rows | "
              "data-center log errors |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in seeds:
        for arm in ARMS:
            run = results[s][arm]
            o = overheads[(s, arm)]
            lines.append(f"| {s} | {arm} | {run['wall']:.1f} | {o['until_base']:.1f} | {o['phase']:.1f} | {o['own']:.1f} | "
                         f"{o['after']:.1f} | {o['parallel']} | {o['aggregate']:.2f} | {o['aggregate'] * 8:.2f} | {o['gap_mean']:.2f} | "
                         f"{o['gap_p90']:.2f} | {len(run['rows'])} | {run['summary_rows']} | {run['dc_errors']} |")
    lines += ["", "| target: workflow overhead <= 0.5 s a round (per (edge, round) job) | runs | range s | verdict |",
              "|---|---:|---|---|"]
    for name, values in measures.items():
        over = sum(v > 0.5 for v in values)
        lines.append(f"| {name} | {len(values)} | {min(values):.2f} - {max(values):.2f} | "
                     f"{'met' if not over else f'**MISSED** in {over} of {len(values)} runs'} |")
    lines += ["", (f"Lost or mixed-up replies: every run finished all {expected} jobs with {expected} summary rows, "
                   "every metrics.json and checkpoint.json names its own round (asserted), the data center's log has no "
                   "error" if lost_ok else
                   f"Lost or mixed-up replies: only {len(clean)} of {len(seeds) * len(ARMS)} runs finished all {expected} "
                   "jobs with a clean data-center log (see the table)")
              + " (a lost reply would hang or fail a job; replies carry their request's id, and the edge checks every "
              "checkpoint it receives against its sha256).", ""]
    lines += ["## Drift-check latency while a training runs", ""]
    if load_text:
        lines += ["`benchmarks/datacenter_load_bench.py --no-write`, run by this script after the fleet runs "
                  "(machine otherwise as above; method and earlier figures: benchmarks/results/datacenter-load.md):", "",
                  split_tables(load_text), "",
                  "The load bench asserts that each check's reply carries the checker's own state: it completed, so "
                  "none of its checks got a lost or mixed-up reply.", ""]
    else:
        lines += ["Not rerun here (`--skip-load`); see benchmarks/results/datacenter-load.md.", ""]
    lines += [PREVIOUS]
    return "\n".join(lines)


def jobs_per_run(results: dict) -> list:
    first = next(iter(results.values()))
    return list(next(iter(first.values()))["rows"])


def load_bench(timeout: float) -> str:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks/datacenter_load_bench.py"), "--no-write"],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return f"(the load bench failed, exit {out.returncode}: {out.stderr.strip()[-800:]})"
    keep = [line for line in out.stdout.splitlines() if line.startswith("|")]
    return "\n".join(keep)


def split_tables(text: str) -> str:
    """A blank line before each table header of the load bench's output (its rows come without them)."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if i and line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            out.append("")
        out.append(line)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both arms, e.g. edge.batch_size=100 (YAML value)")
    parser.add_argument("--skip-load", action="store_true", help="do not run benchmarks/datacenter_load_bench.py")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep", help="keep the work directories (and each finished arm's figures, reused by a later call) under this folder")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per snakemake run")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    scenario = yaml.safe_load(SCENARIO.read_text())
    jobs = jobs_of(scenario)
    seeds = list(range(args.seeds))
    t0 = time.time()
    results: dict[int, dict] = {}
    reused: list[str] = []
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        for s in seeds:
            results[s] = {}
            order = list(ARMS) if s % 2 == 0 else list(reversed(ARMS))  # alternate which arm runs first
            for arm in order:
                workdir, saved = tmp / f"seed{s}-{arm}", tmp / f"seed{s}-{arm}.json"
                if args.keep and saved.is_file():  # finished by an earlier call with the same --keep: collect again
                    timing = json.loads(saved.read_text())
                    reused.append(f"seed {s} {arm}")
                else:
                    make_workdir(workdir, s, ARMS[arm], overrides)
                    print(f"seed {s} {arm}: snakemake in {workdir}", file=sys.stderr, flush=True)
                    timing = run_arm(workdir, args.timeout)
                    saved.write_text(json.dumps(timing))
                results[s][arm] = {**timing, **collect(workdir, jobs)}
                t = totals(list(results[s][arm]["rows"].values()))
                print(f"  seed {s} {arm}: wall {timing['wall']:.1f} s, labels {t['labels']}, fine-tunes {t['finetunes']}, "
                      f"training {t['train_s']:.1f} s, acc {t['acc']:.4f}", file=sys.stderr, flush=True)
            results[s] = {arm: results[s][arm] for arm in ARMS}
        load_text, load_seconds = None, 0.0
        load_saved = tmp / "load.json"
        if args.keep and load_saved.is_file():
            load_text, load_seconds = json.loads(load_saved.read_text())
            reused.append("the load bench")
        elif not args.skip_load:
            print("datacenter_load_bench.py --no-write", file=sys.stderr, flush=True)
            started = time.time()
            load_text = load_bench(args.timeout)
            load_seconds = time.time() - started
            load_saved.write_text(json.dumps([load_text, load_seconds]))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    spent = sum(results[s][arm]["wall"] for s in seeds for arm in ARMS) + load_seconds
    text = report(results, seeds, overrides, load_text, time.time() - t0, spent, commit, reused)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
