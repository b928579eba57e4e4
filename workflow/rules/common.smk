# Helpers of the workflow: validation of config.yaml and rounds.yaml (the schemas in
# workflow/schemas are the validators), the fleet's (edge, round) jobs and their chaining,
# and the names the rules share.
# Process plumbing (the data center's lifetime, warm starts) lives in the torch-free
# `runtime` package; parsing this file imports nothing else of the project.

import json
import os
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

from runtime import pipeline

# The venv's interpreter (the one running Snakemake), or the rule's own environment's
# `python` when Snakemake deploys software itself (--sdm conda).
PYTHON = "python" if workflow.deployment_settings.deployment_method else sys.executable
ENV = "../envs/driftloop.yaml"
# Relative to the working directory: a param that changes with the checkout's location
# (or source_path's per-run cache folder) would rerun the summary every time.
SUMMARIZE = os.path.relpath(Path(workflow.basedir) / "workflow/scripts/summarize.py")
SCHEMAS = Path(workflow.basedir) / "workflow/schemas"
WARM_START = bool(config.get("warm_start", True)) and not workflow.deployment_settings.deployment_method
ENDPOINT_FILE = str(pipeline.ENDPOINT_FILE)
TOKEN_FILE = str(pipeline.TOKEN_FILE)
STATE_DIR = pipeline.STATE_DIR
# The round- and edge-id patterns are written once, in rounds.schema.yaml; here they constrain the wildcards.
_ROUNDS_DEFS = yaml.safe_load((SCHEMAS / "rounds.schema.yaml").read_text())["$defs"]
ROUND_ID = _ROUNDS_DEFS["round_id"]["pattern"]
EDGE_ID = _ROUNDS_DEFS["edge_id"]["pattern"]
# The edge of a one-edge rounds file (`rounds:` without `edges:`), as mlcore.rounds.DEFAULT_EDGE.
DEFAULT_EDGE = "edge"
FLEET_KEYS = ("only", "per_edge")


def launch(module):
    """The shell prefix that runs `python -m <module>` for a job: forked by the warm starter when
    one listens on its socket, else a cold process. The same with or without `warm_start` (onstart
    removes the socket when it starts none), so toggling it, or running jobs on other hosts, reruns nothing."""
    return " ".join(pipeline.warm_command(PYTHON, module, [], warm=True))


# Where and how the services run (the data center's address and TLS, warm starts): they change
# no result, so they stay out of the settings the jobs read, and changing them reruns nothing.
RUNTIME_KEYS = ("server", "warm_start")


def check_settings(config):
    """The rules of config.yaml its schema cannot state (as mlcore.settings.settings_from_dict, which
    the command lines run on their own): checked at parse, so a bad config fails before any job runs.
    Absent keys take the code's defaults (the schema fills none in)."""

    def refuse(where, message):
        raise WorkflowError(f"invalid config: {where}: {message}")

    def get(section, key, default):
        return (config.get(section) or {}).get(key, default)

    source, stream = get("dataset", "source_fraction", 0.5), get("dataset", "stream_fraction", 0.3)
    if source + stream >= 1:
        refuse("dataset.source_fraction + dataset.stream_fraction",
               f"{source} + {stream} must leave room for the evaluation split (< 1)")
    sample, batch = get("edge", "random_sample", 100), get("edge", "batch_size", 200)
    if sample > batch:
        refuse("edge.random_sample", f"{sample} must not exceed edge.batch_size ({batch})")
    harm = (get("datacenter", "harm_check", None) or {}).get("max_labels", 40)
    selection = get("datacenter", "selection_labels", 10)
    if max(harm, selection) > sample:
        refuse("datacenter.harm_check.max_labels / datacenter.selection_labels",
               f"{harm} / {selection}: both are drawn from the random sample, so neither may exceed edge.random_sample ({sample})")


def load_config(config):
    """Validate config.yaml against its schema and check_settings; return the settings (without
    RUNTIME_KEYS) as JSON text."""
    validate(config, "../schemas/config.schema.yaml")
    check_settings(config)
    return json.dumps({key: value for key, value in config.items() if key not in RUNTIME_KEYS}, sort_keys=True)


def check_fleet(raw, path):
    """The rules of rounds.yaml its schema cannot state (as mlcore.rounds._check_ids): unique
    round ids; `only` and `per_edge` in the fleet form only, naming its edges; every edge has a round."""

    def refuse(where, message):
        raise WorkflowError(f"invalid rounds file {path}: {where}: {message}")

    seen = {}
    for i, entry in enumerate(raw["rounds"]):
        if entry["id"] in seen:
            refuse(f"rounds[{i}].id", f"duplicate id {entry['id']!r} (first at rounds[{seen[entry['id']]}])")
        seen[entry["id"]] = i
    edges = raw.get("edges")
    for i, entry in enumerate(raw["rounds"]):
        for key in FLEET_KEYS:
            if key in entry and edges is None:
                refuse(f"rounds[{i}].{key}", "only a fleet names edges (add a top-level `edges: [...]`)")
            unknown = [edge for edge in entry.get(key, ()) if edge not in edges]
            if unknown:
                refuse(f"rounds[{i}].{key}", f"unknown edge {unknown[0]!r} (edges: {edges})")
        excluded = [edge for edge in entry.get("per_edge", {}) if "only" in entry and edge not in entry["only"]]
        if excluded:
            refuse(f"rounds[{i}].per_edge", f"edge {excluded[0]!r} is not in this round's `only` {entry['only']}")
    for edge in edges or ():
        if not any(edge in entry.get("only", (edge,)) for entry in raw["rounds"]):
            refuse("edges", f"edge {edge!r} has no round (every round's `only` leaves it out)")


def load_rounds(path, batch_size):
    """Validate rounds.yaml (either form) against its schema; return {edge id: {round id: its
    one-round document as JSON text}}, edges and rounds in file order, and every round id of the
    timeline in file order.

    An edge's rounds are the timeline's rounds it takes part in (`only`), each with the edge's
    `per_edge` override laid over the round's own shift, mix and size (mlcore.rounds.expand_fleet).
    The document carries the edge and the round's `offset` into that edge's seeded stream order
    (mlcore/stream.py): the sizes of the edge's rounds before it (`size`, or the edge's
    `batch_size`), as mlcore.rounds.assign_offsets computes it. It changes only when an
    earlier round's size does (then this round reruns, with its new rows); editing a round's
    shift for one edge changes that edge's document of that round only.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise WorkflowError(f"invalid rounds file {path}: {error}")
    validate(raw, "../schemas/rounds.schema.yaml")
    check_fleet(raw, path)
    fleet = {}
    for edge in raw.get("edges", [DEFAULT_EDGE]):
        fleet[edge], offset = {}, 0
        for entry in raw["rounds"]:
            if edge not in entry.get("only", (edge,)):
                continue
            resolved = {key: value for key, value in entry.items() if key not in FLEET_KEYS}
            resolved.update(entry.get("per_edge", {}).get(edge, {}))
            document = {"rounds": [resolved], "offset": offset, "edge": edge}
            fleet[edge][entry["id"]] = json.dumps(document, sort_keys=True)
            offset += resolved.get("size", batch_size)
    return fleet, [entry["id"] for entry in raw["rounds"]]


SETTINGS_JSON = load_config(config)
# 200: edge.batch_size's default (mlcore/settings.py EdgeSettings), for a config without it.
FLEET, TIMELINE = load_rounds(config["rounds"], config["edge"].get("batch_size", 200))
# Every (edge, round) job, edge by edge in file order: the summary's rows.
JOB_EDGES = [edge for edge, rounds in FLEET.items() for _ in rounds]
JOB_ROUNDS = [round_id for rounds in FLEET.values() for round_id in rounds]


def previous_checkpoint(wildcards):
    """An edge's round k starts from its round k-1's checkpoint; its first round from the base model."""
    round_ids = list(FLEET[wildcards.edge])
    index = round_ids.index(wildcards.round)
    if index == 0:
        return "results/models/base.json"
    return f"results/edges/{wildcards.edge}/rounds/{round_ids[index - 1]}/checkpoint.json"


def peer_checkpoints(wildcards):
    """With `share_zoo: true`, the other edges' latest checkpoints up to this round: their zoo
    models are candidates when this edge chooses a start (issue 11's shared zoo).

    An edge listed before this one in `edges` that takes part in this round gives its checkpoint
    *of this round*; the others their latest earlier one. So edges hit by one drift in one round
    train once: the first of them to meet it retrains, each later one is offered that model and
    adopts it only if it passes its own harm test on its own labels (else it trains its own).
    Explicit inputs keep the answer deterministic, at a price: a round then waits for every
    edge's earlier rounds and for the same round of the edges listed before it, so the fleet's
    rounds run one after another, and editing one edge's round reruns the later rounds of all edges.
    """
    if not config.get("share_zoo", False):
        return []
    position = TIMELINE.index(wildcards.round)
    edges = list(FLEET)
    me = edges.index(wildcards.edge)
    peers = []
    for index, edge in enumerate(edges):
        window = set(TIMELINE[:position + 1] if index < me else TIMELINE[:position])
        done = [round_id for round_id in FLEET[edge] if round_id in window]
        if edge != wildcards.edge and done:
            peers.append(f"results/edges/{edge}/rounds/{done[-1]}/checkpoint.json")
    return peers


def round_spec(wildcards):
    """This edge's entry of this round of rounds.yaml, its stream offset and the edge id, as a one-round rounds document (JSON)."""
    return FLEET[wildcards.edge][wildcards.round]


def start_services():
    """onstart: the data center (and the warm starter) outside the DAG; see runtime/pipeline.py."""
    try:
        pipeline.start(PYTHON, SETTINGS_JSON, config["server"], warm=WARM_START)
    except pipeline.ServiceError as error:
        raise WorkflowError(str(error))


def stop_services():
    """onsuccess/onerror: SIGTERM, let the data center flush its state, SIGKILL if it will not go."""
    pipeline.stop(float(config["server"].get("stop_timeout", 30)))
