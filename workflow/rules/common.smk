# Helpers of the workflow: validation of config.yaml and rounds.yaml (the schemas in
# workflow/schemas are the validators), round chaining, and the names the rules share.
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
PORT_FILE = str(pipeline.PORT_FILE)
TOKEN_FILE = str(pipeline.TOKEN_FILE)
STATE_DIR = pipeline.STATE_DIR
# The round-id pattern is written once, in rounds.schema.yaml; here it constrains the wildcard.
ROUND_ID = yaml.safe_load((SCHEMAS / "rounds.schema.yaml").read_text())["$defs"]["round_id"]["pattern"]


def launch(module):
    """The shell prefix that runs `python -m <module>` for a job: forked warm, or a cold process."""
    return " ".join(pipeline.warm_command(PYTHON, module, [], warm=WARM_START))


def load_config(config):
    """Validate config.yaml against its schema; return the settings as JSON text.

    Two rules the schema cannot state (source + stream fractions < 1, random_sample <=
    batch_size) are checked by mlcore.settings when the data center starts, in onstart.
    """
    validate(config, "../schemas/config.schema.yaml")
    return json.dumps(config, sort_keys=True)


def load_rounds(path, batch_size):
    """Validate rounds.yaml against its schema; return {round id: its one-round document as JSON text}, in order.

    The document carries the round's `offset` into the seeded stream order (mlcore/stream.py):
    the sizes of the rounds before it (`size`, or the edge's `batch_size`), as
    mlcore.rounds.assign_offsets computes it. It changes only when an earlier round's size does
    (then this round reruns, with its new rows); editing a round's shift moves no other round.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise WorkflowError(f"invalid rounds file {path}: {error}")
    validate(raw, "../schemas/rounds.schema.yaml")
    rounds, offset = {}, 0
    for i, entry in enumerate(raw["rounds"]):  # unique ids: the one rule the schema cannot state
        if entry["id"] in rounds:
            raise WorkflowError(f"invalid rounds file {path}: rounds[{i}].id: duplicate id {entry['id']!r}")
        rounds[entry["id"]] = json.dumps({"rounds": [entry], "offset": offset}, sort_keys=True)
        offset += entry.get("size", batch_size)
    return rounds


SETTINGS_JSON = load_config(config)
# 200: edge.batch_size's default (mlcore/settings.py EdgeSettings), for a config without it.
ROUNDS = load_rounds(config["rounds"], config["edge"].get("batch_size", 200))
ROUND_IDS = list(ROUNDS)


def previous_checkpoint(wildcards):
    """Round k starts from round k-1's checkpoint; the first round from the base model."""
    index = ROUND_IDS.index(wildcards.round)
    if index == 0:
        return "results/models/base.json"
    return f"results/rounds/{ROUND_IDS[index - 1]}/checkpoint.json"


def round_spec(wildcards):
    """This round's entry of rounds.yaml and its stream offset, as a one-round rounds document (JSON)."""
    return ROUNDS[wildcards.round]


def start_services():
    """onstart: the data center (and the warm starter) outside the DAG; see runtime/pipeline.py."""
    try:
        pipeline.start(PYTHON, SETTINGS_JSON, config["server"], warm=WARM_START)
    except pipeline.ServiceError as error:
        raise WorkflowError(str(error))


def stop_services():
    """onsuccess/onerror: SIGTERM, let the data center flush its state, SIGKILL if it will not go."""
    pipeline.stop(float(config["server"].get("stop_timeout", 30)))
