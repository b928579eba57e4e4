# Helpers of the workflow: config and rounds validation, round chaining, and the
# data-center server's lifecycle (started in onstart, outside the DAG; see README).

import atexit
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from snakemake.utils import validate

from mlcore.rounds import RoundsError, parse_rounds
from mlcore.settings import SettingsError, settings_from_dict
from protocol import create_token_file

# The venv's interpreter (the one running Snakemake), or the rule's own environment's
# `python` when Snakemake deploys software itself (--sdm conda).
PYTHON = "python" if workflow.deployment_settings.deployment_method else sys.executable
ENV = "../envs/driftloop.yaml"
SERVER_DIR = Path("results/server")
PORT_FILE = SERVER_DIR / "port"
PID_FILE = SERVER_DIR / "pid"
TOKEN_FILE = SERVER_DIR / "token"
STATE_DIR = "results/datacenter"


def _refuse(what, error):
    raise WorkflowError(f"invalid {what}: {error}")


def load_config(config):
    """Validate config.yaml (schema, then semantics); return the settings as JSON text."""
    validate(config, "../schemas/config.schema.yaml")
    try:
        settings_from_dict(config)
    except SettingsError as error:
        _refuse("config", error)
    return json.dumps(config, sort_keys=True)


def load_rounds(path):
    """Validate rounds.yaml; return {round id: its spec as JSON text}, in order."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        _refuse(f"rounds file {path}", error)
    validate(raw, "../schemas/rounds.schema.yaml")
    try:
        parse_rounds(raw)
    except RoundsError as error:
        _refuse(f"rounds file {path}", error)
    return {entry["id"]: json.dumps(entry, sort_keys=True) for entry in raw["rounds"]}


SETTINGS_JSON = load_config(config)
ROUNDS = load_rounds(config["rounds"])
ROUND_IDS = list(ROUNDS)


def previous_checkpoint(wildcards):
    """Round k starts from round k-1's checkpoint; the first round from the base model."""
    index = ROUND_IDS.index(wildcards.round)
    if index == 0:
        return "results/models/base.json"
    return f"results/rounds/{ROUND_IDS[index - 1]}/checkpoint.json"


def round_spec(wildcards):
    return ROUNDS[wildcards.round]


# ------------------------------------------------------------------ the data-center server
_server = {}


def start_datacenter():
    """Start the server, wait until it publishes its port, and arrange for it to stop."""
    server = config["server"]
    SERVER_DIR.mkdir(parents=True, exist_ok=True)
    Path("logs").mkdir(exist_ok=True)
    PORT_FILE.unlink(missing_ok=True)
    create_token_file(TOKEN_FILE)
    settings_file = SERVER_DIR / "config.json"
    settings_file.write_text(SETTINGS_JSON, encoding="utf-8")
    command = [
        PYTHON, "-m", "datacenter", "serve", "--config", str(settings_file), "--state-dir", STATE_DIR,
        "--host", str(server.get("host", "127.0.0.1")), "--port", str(server.get("port", 0)),
        "--port-file", str(PORT_FILE), "--token-file", str(TOKEN_FILE), "--exit-with-pid", str(os.getpid()),
    ]
    log = open("logs/datacenter.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    _server["process"] = process
    PID_FILE.write_text(f"{process.pid}\n", encoding="utf-8")
    atexit.register(stop_datacenter)
    deadline = time.monotonic() + float(server.get("start_timeout", 60))
    while not PORT_FILE.exists():
        if process.poll() is not None:
            raise WorkflowError(f"the data-center server exited with code {process.returncode} at start; see logs/datacenter.log")
        if time.monotonic() > deadline:
            stop_datacenter()
            raise WorkflowError("the data-center server did not start listening in time; see logs/datacenter.log")
        time.sleep(0.05)
    print(f"data center listening on port {PORT_FILE.read_text().strip()} (pid {process.pid})", file=sys.stderr)


def stop_datacenter():
    """SIGTERM, let it drain and flush, SIGKILL if it will not go."""
    process = _server.pop("process", None)
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=float(config["server"].get("stop_timeout", 30)))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
