"""Summarize the rounds: one CSV row per round and two plots for `snakemake --report`."""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ["round", "shift", "flagged", "decision", "accuracy_before", "accuracy_after", "accuracy_after_in_sample",
           "estimate_atc", "estimate_doc", "retrained", "labels_used", "checkpoint", "sha256"]


def _rounded(value) -> float | None:
    return None if value is None else round(float(value), 4)


def read_rows(metrics_files: list[str], checkpoint_files: list[str]) -> list[dict]:
    rows = []
    for metrics_file, checkpoint_file in zip(metrics_files, checkpoint_files, strict=True):
        metrics = json.loads(Path(metrics_file).read_text(encoding="utf-8"))
        checkpoint = json.loads(Path(checkpoint_file).read_text(encoding="utf-8"))
        rows.append({
            "round": metrics["round"],
            "shift": metrics["shift"],
            "flagged": bool(metrics["flagged"]),
            "decision": metrics["decision"],
            "accuracy_before": _rounded(metrics["accuracy_before"]),  # held out, with the round's shift
            "accuracy_after": _rounded(metrics["accuracy_after"]),
            "accuracy_after_in_sample": _rounded(metrics["accuracy_after_in_sample"]),
            "estimate_atc": _rounded(metrics.get("estimate_atc")),  # label-free, information only
            "estimate_doc": _rounded(metrics.get("estimate_doc")),
            "retrained": bool(metrics["retrained"]),
            "labels_used": int(metrics["labels_used"]),
            "checkpoint": checkpoint["checkpoint"],
            "sha256": checkpoint["sha256"],
        })
    return rows


def write_table(rows: list[dict], path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_accuracy(rows: list[dict], path: str) -> None:
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 3.5))
    for i, row in enumerate(rows):
        if row["shift"] != "none":
            ax.axvspan(i - 0.5, i + 0.5, color="tab:orange", alpha=0.12, lw=0)
    ax.plot(x, [r["accuracy_before"] for r in rows], "o-", label="held out, model entering the round")
    ax.plot(x, [r["accuracy_after"] for r in rows], "s--", label="held out, model leaving the round")
    ax.plot(x, [r["estimate_atc"] for r in rows], ":", color="grey", label="label-free estimate (ATC), entering")
    retrained = [i for i, r in enumerate(rows) if r["retrained"]]
    ax.plot(retrained, [rows[i]["accuracy_after"] for i in retrained], "k*", ms=12, label="retrained")
    ax.set_xticks(list(x), [f"{r['round']}\n{r['shift']}\n{r['decision']}" for r in rows], fontsize=6)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("held-out accuracy (evaluation only)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_labels(rows: list[dict], path: str) -> None:
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 3))
    ax.bar(range(len(rows)), [r["labels_used"] for r in rows], color="tab:green")
    ax.set_xticks(range(len(rows)), [r["round"] for r in rows], fontsize=7)
    ax.set_ylabel("labels used")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--accuracy-plot", required=True)
    parser.add_argument("--labels-plot", required=True)
    args = parser.parse_args()
    rows = read_rows(args.metrics, args.checkpoints)
    write_table(rows, args.table)
    plot_accuracy(rows, args.accuracy_plot)
    plot_labels(rows, args.labels_plot)


if __name__ == "__main__":
    main()
