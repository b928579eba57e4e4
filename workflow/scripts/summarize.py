"""Summarize the fleet's rounds: one CSV row per (edge, round), edge by edge, and four plots for
`snakemake --report`: accuracy per edge, labels per edge, an edges x rounds heat map of held-out
accuracy, and the training queue's wait per edge."""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import matplotlib

import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ["edge", "round", "shift", "flagged", "decision", "accuracy_before", "accuracy_after", "accuracy_after_in_sample",
           "estimate_atc", "estimate_doc", "estimate_atc_error", "estimate_doc_error", "retrained", "labels_used", "pooled_labels", "from_peer", "queue_wait", "checkpoint", "sha256"]


def _rounded(value) -> float | None:
    return None if value is None else round(float(value), 4)


def _error(estimate, truth) -> float | None:
    """estimate - truth (positive: the estimate flatters the model), None without both."""
    return None if estimate is None or truth is None else _rounded(float(estimate) - float(truth))


def read_rows(edges: list[str], metrics_files: list[str], checkpoint_files: list[str]) -> list[dict]:
    rows = []
    for edge, metrics_file, checkpoint_file in zip(edges, metrics_files, checkpoint_files, strict=True):
        metrics = json.loads(Path(metrics_file).read_text(encoding="utf-8"))
        checkpoint = json.loads(Path(checkpoint_file).read_text(encoding="utf-8"))
        rows.append({
            "edge": edge,
            "round": metrics["round"],
            "shift": metrics["shift"],
            "flagged": bool(metrics["flagged"]),
            "decision": metrics["decision"],
            "accuracy_before": _rounded(metrics["accuracy_before"]),  # held out, with the round's shift
            "accuracy_after": _rounded(metrics["accuracy_after"]),
            "accuracy_after_in_sample": _rounded(metrics["accuracy_after_in_sample"]),
            "estimate_atc": _rounded(metrics.get("estimate_atc")),  # label-free, information only
            "estimate_doc": _rounded(metrics.get("estimate_doc")),
            # how far each was from the truth it estimates (the held-out accuracy before): its error, round by round
            "estimate_atc_error": _error(metrics.get("estimate_atc"), metrics["accuracy_before"]),
            "estimate_doc_error": _error(metrics.get("estimate_doc"), metrics["accuracy_before"]),
            "retrained": bool(metrics["retrained"]),
            "labels_used": int(metrics["labels_used"]),
            # a fleet sharing its zoo: another edge's labels of this round trained on too; the start came from another edge
            "pooled_labels": int(metrics.get("pooled_labels") or 0),
            "from_peer": bool(metrics.get("from_peer")),
            "queue_wait": _rounded(metrics.get("queue_wait")),  # seconds in the data center's training queue
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


def by_edge(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of each edge, edges and rounds in the order of the table."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["edge"], []).append(row)
    return out


def timeline(rows: list[dict]) -> list[str]:
    """Every round id once, in the order they first appear (the rounds file's order)."""
    return list(dict.fromkeys(row["round"] for row in rows))


def plot_accuracy(rows: list[dict], path: str) -> None:
    """One panel per edge: held-out accuracy entering and leaving each round."""
    edges = by_edge(rows)
    width = max(6, 0.6 * max(len(edge_rows) for edge_rows in edges.values()))
    fig, axes = plt.subplots(len(edges), 1, figsize=(width, 3.5 * len(edges)), squeeze=False)
    for ax, (edge, edge_rows) in zip(axes[:, 0], edges.items()):
        x = range(len(edge_rows))
        for i, row in enumerate(edge_rows):
            if row["shift"] != "none":
                ax.axvspan(i - 0.5, i + 0.5, color="tab:orange", alpha=0.12, lw=0)
        ax.plot(x, [r["accuracy_before"] for r in edge_rows], "o-", label="held out, model entering the round")
        ax.plot(x, [r["accuracy_after"] for r in edge_rows], "s--", label="held out, model leaving the round")
        ax.plot(x, [r["estimate_atc"] for r in edge_rows], ":", color="grey", label="label-free estimate (ATC), entering")
        retrained = [i for i, r in enumerate(edge_rows) if r["retrained"]]
        ax.plot(retrained, [edge_rows[i]["accuracy_after"] for i in retrained], "k*", ms=12, label="retrained")
        ax.set_xticks(list(x), [f"{r['round']}\n{r['shift']}\n{r['decision']}" for r in edge_rows], fontsize=6)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"edge {edge}", fontsize=9)
        ax.set_ylabel("held-out accuracy")
        ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _per_edge_bars(rows: list[dict], key: str, ylabel: str, path: str, total_unit: str) -> None:
    """Bars per round, one colour per edge side by side; the legend gives each edge's total."""
    edges, rounds = by_edge(rows), timeline(rows)
    position = {round_id: i for i, round_id in enumerate(rounds)}
    width = 0.8 / len(edges)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(rounds) * (len(edges) + 1)), 3))
    for k, (edge, edge_rows) in enumerate(edges.items()):
        values = [r[key] or 0 for r in edge_rows]
        ax.bar([position[r["round"]] - 0.4 + (k + 0.5) * width for r in edge_rows], values, width,
               label=f"{edge} ({round(sum(values), 1):g} {total_unit})")
    ax.set_xticks(range(len(rounds)), rounds, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, title="edge (total)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_labels(rows: list[dict], path: str) -> None:
    _per_edge_bars(rows, "labels_used", "labels used", path, "labels")


def plot_queue_wait(rows: list[dict], path: str) -> None:
    """Queue wait per edge and round; a note instead when no round reports it."""
    if all(row["queue_wait"] is None for row in rows):
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, "no round reports queue_wait", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path)
        plt.close(fig)
        return
    _per_edge_bars(rows, "queue_wait", "queue wait (s)", path, "s")


def plot_heatmap(rows: list[dict], path: str) -> None:
    """Edges x rounds: held-out accuracy leaving each round, with the shift and decision in the cell."""
    edges, rounds = by_edge(rows), timeline(rows)
    grid = np.full((len(edges), len(rounds)), np.nan)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rounds)), 1.2 + 0.7 * len(edges)))
    for i, edge_rows in enumerate(edges.values()):
        for row in edge_rows:
            j = rounds.index(row["round"])
            grid[i, j] = row["accuracy_after"]
            mark = "*" if row["retrained"] else ""
            ax.text(j, i, f"{row['accuracy_after']:.2f}{mark}\n{row['shift']}", ha="center", va="center", fontsize=5)
    image = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(rounds)), rounds, fontsize=7)
    ax.set_yticks(range(len(edges)), list(edges), fontsize=8)
    ax.set_xlabel("round (* retrained)")
    ax.set_ylabel("edge")
    fig.colorbar(image, ax=ax, label="held-out accuracy after")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edges", nargs="+", required=True, help="the edge of each metrics file, in the same order")
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--accuracy-plot", required=True)
    parser.add_argument("--labels-plot", required=True)
    parser.add_argument("--heatmap-plot", required=True)
    parser.add_argument("--queue-wait-plot", required=True)
    args = parser.parse_args()
    rows = read_rows(args.edges, args.metrics, args.checkpoints)
    write_table(rows, args.table)
    plot_accuracy(rows, args.accuracy_plot)
    plot_labels(rows, args.labels_plot)
    plot_heatmap(rows, args.heatmap_plot)
    plot_queue_wait(rows, args.queue_wait_plot)


if __name__ == "__main__":
    main()
