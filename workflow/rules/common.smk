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
# Relative to the working directory: a param that changes with the checkout's location
# (or source_path's per-run cache folder) would rerun the summary every time.
SUMMARIZE = os.path.relpath(Path(workflow.basedir) / "workflow/scripts/summarize.py")
SERVER_DIR = Path("results/server")
PORT_FILE = SERVER_DIR / "port"
PID_FILE = SERVER_DIR / "pid"
WARM_SOCKET = SERVER_DIR / "warm.sock"
WARM_START = bool(config.get("warm_start", True)) and not workflow.deployment_settings.deployment_method
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


# ------------------------------------------------------------------ services outside the DAG
# The data-center server, and a warm starter that keeps torch imported and forks each
# job (a cold `import torch` costs more than an edge round's compute). Both start in onstart,
# stop in onsuccess/onerror, and exit by themselves when this Snakemake process is gone.
_services = {}


def _launch(name, command, ready):
    """Start one service in the background, logging to logs/<name>.log."""
    ready.unlink(missing_ok=True)
    log = open(f"logs/{name}.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    _services[name] = (process, ready)
    return process


def _wait_ready(name, deadline):
    process, ready = _services[name]
    while not ready.exists():
        if process.poll() is not None:
            stop_services()
            raise WorkflowError(f"the {name} exited with code {process.returncode} at start; see logs/{name}.log")
        if time.monotonic() > deadline:
            stop_services()
            raise WorkflowError(f"the {name} did not get ready in time; see logs/{name}.log")
        time.sleep(0.05)


def start_services():
    """Start the warm starter, then the data center forked from it; wait until it listens."""
    server = config["server"]
    SERVER_DIR.mkdir(parents=True, exist_ok=True)
    Path("logs").mkdir(exist_ok=True)
    create_token_file(TOKEN_FILE)
    settings_file = SERVER_DIR / "config.json"
    settings_file.write_text(SETTINGS_JSON, encoding="utf-8")
    owner = str(os.getpid())
    atexit.register(stop_services)
    deadline = time.monotonic() + float(server.get("start_timeout", 60))
    if WARM_START:
        _launch("warm-starter", [PYTHON, "-m", "mlcore.warm", "serve", "--socket", str(WARM_SOCKET),
                                 "--module", "edge", "--module", "datacenter", "--exit-with-pid", owner], WARM_SOCKET)
        _wait_ready("warm-starter", deadline)
    # Through the warm starter when it runs (one torch import less), else a cold process.
    _launch("datacenter", [
        PYTHON, "-m", "mlcore.warm", "run", "--socket", str(WARM_SOCKET), "--pid-file", str(PID_FILE), "datacenter", "--",
        "serve", "--config", str(settings_file), "--state-dir", STATE_DIR,
        "--host", str(server.get("host", "127.0.0.1")), "--port", str(server.get("port", 0)),
        "--port-file", str(PORT_FILE), "--token-file", str(TOKEN_FILE), "--exit-with-pid", owner,
    ], PORT_FILE)
    _wait_ready("datacenter", deadline)
    print(f"data center listening on port {PORT_FILE.read_text().strip()} (pid {PID_FILE.read_text().strip()})",
          file=sys.stderr)


def stop_services():
    """Stop the services, last started first: SIGTERM, let each drain and flush, SIGKILL if it will not go."""
    running = [process for process, _ in reversed(_services.values()) if process.poll() is None]
    _services.clear()
    deadline = time.monotonic() + float(config["server"].get("stop_timeout", 30))
    for process in running:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
