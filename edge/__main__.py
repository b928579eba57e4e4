"""`python -m edge round ...`: run one round against a serving data center (see docs/learning.md)."""

from __future__ import annotations

import argparse
import io
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from mlcore.atomic import write_atomic, write_json_atomic
from mlcore.cli import run_cli, setup_logging
from mlcore.contract import Context, Exchange, Message, Reply
from mlcore.datasets import load_dataset_and_splits
from mlcore.rounds import find_round, load_edge_rounds
from mlcore.seeding import make_deterministic
from mlcore.settings import load_settings
from protocol.errors import ConnectionLost, UsageError

from .round_runner import EdgeRound, RoundError, summary_line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("round", help="run one round and write checkpoint.json, metrics.json, predictions.parquet")
    one.add_argument("--config", required=True)
    one.add_argument("--rounds", required=True,
                     help="a rounds file (either form) or the workflow's one-round spec.json; the edge's rounds are read")
    one.add_argument("--round", required=True, dest="round_id")
    one.add_argument("--previous", required=True, help="base.json or the previous round's checkpoint.json")
    where = one.add_mutually_exclusive_group(required=True)
    where.add_argument("--port-file", help="the file the data center publishes its port in (waited for)")
    where.add_argument("--port", type=int, help="the data center's port, when it is known (e.g. on another host)")
    where.add_argument("--endpoint", help="the workflow's endpoint file: the data center's address, port and TLS CA")
    one.add_argument("--token-file")
    one.add_argument("--host", default="127.0.0.1", help="the data center's address (default 127.0.0.1)")
    one.add_argument("--tls-ca", help="speak TLS, trusting only this CA certificate (PEM)")
    one.add_argument("--server-name", help="the name the certificate must carry (default: --host)")
    one.add_argument("--edge-id", default="edge",
                     help="this edge's id: its rounds in a fleet, its stream order, its store (default edge)")
    one.add_argument("--outdir", required=True)
    one.add_argument("--store", help="the edge's own checkpoint store (default results/edges/<edge-id>/models, as the workflow)")
    one.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the port or endpoint file (default 120)")
    one.add_argument("--peers", nargs="*", default=[],
                     help="other edges' checkpoint.json: their zoo models are candidates when choosing a start")
    one.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def read_previous(path: str, option: str = "--previous") -> dict:
    """A round's record (base.json or checkpoint.json): its checkpoint's sha256 and its state."""
    file = Path(path)
    if not file.is_file():
        raise RoundError(f"{option}: file not found: {file}")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RoundError(f"{option}: {file} is not JSON: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("state"), str):
        raise RoundError(f"{option}: {file} names no state")
    return record


def wait_for(path: str, read, timeout: float) -> Any:
    """The data center (or the workflow, for it) publishes a file once listening; wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read(path)
        except (FileNotFoundError, ValueError):
            if time.monotonic() > deadline:
                raise RoundError(f"no valid {path} after {timeout:.0f} s: is the data center serving?")
            time.sleep(0.1)


def read_endpoint(path: str) -> dict[str, Any]:
    """runtime/pipeline.py's endpoint file: host, port, and the TLS CA and server name (or null)."""
    found = json.loads(Path(path).read_text(encoding="utf-8"))
    if not (isinstance(found, dict) and isinstance(found.get("host"), str) and isinstance(found.get("port"), int)):
        raise ValueError(f"{path} names no host and port")
    return found


def server_address(args: argparse.Namespace, read_port_file) -> tuple[str, int, str | None, str]:
    """(host, port, TLS CA or None, server name) from --endpoint, --port-file or --port and the flags."""
    host, ca, name = args.host, args.tls_ca, args.server_name
    if args.endpoint is not None:
        found = wait_for(args.endpoint, read_endpoint, args.wait)
        host, port = found["host"], found["port"]
        ca, name = ca or found.get("tls_ca"), name or found.get("server_name")
    elif args.port_file is not None:
        port = wait_for(args.port_file, read_port_file, args.wait)
    else:
        port = args.port
    return host, port, ca, name or host


def protocol_exchange(client) -> Exchange:
    """The contract's `Exchange` over the protocol client (one session for the round)."""

    async def exchange(message: Message, query, random, context: Context) -> Reply:
        response = await client.send_data(message.value, query, random, round=context.round, extra=context.extra())
        return Reply(response.retraining_flag, response.checkpoint, dict(response.info), response.checkpoint_data)

    return exchange


def failure_message(exc: Exception, tls: bool) -> str:
    """What went wrong talking to the data center, with the likely cause when TLS is involved."""
    message = f"talking to the data center failed: {exc}"
    if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
        return message + " (its certificate is not signed by the CA given with --tls-ca, or names another host)"
    if not tls and isinstance(exc, ConnectionLost):
        return message + " (if the data center serves TLS, give its CA with --tls-ca)"
    return message


async def run_with_client(round_: EdgeRound, client) -> dict:
    async with client:
        return await round_.run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = setup_logging("edge", args.verbose)

    def run() -> int:
        from protocol import AsyncClient, ProtocolError, read_port_file, read_token_file, run
        from protocol.loop import chosen_loop
        from protocol.tls import client_context

        settings = load_settings(args.config)
        # Offsets as the workflow computes them (a spec.json carries its own); the edge id picks
        # the edge's rounds in a fleet file and its stream order (mlcore/stream.py).
        spec = find_round(load_edge_rounds(args.rounds, args.edge_id, settings.edge.batch_size), args.round_id)
        previous = read_previous(args.previous)
        make_deterministic()
        dataset, splits = load_dataset_and_splits(settings.dataset, settings.seed)
        host, port, ca, server_name = server_address(args, read_port_file)
        token = read_token_file(args.token_file) if args.token_file else None
        tls = client_context(ca) if ca else None
        client = AsyncClient(port, host=host, token=token, edge_id=args.edge_id, ssl=tls, server_hostname=server_name)
        store = args.store or str(Path("results") / "edges" / args.edge_id / "models")
        peers = tuple(read_previous(path, "--peers")["state"] for path in args.peers)
        round_ = EdgeRound(settings, dataset, splits, spec, previous, protocol_exchange(client), store,
                           edge_id=args.edge_id, peers=peers)
        log.info("edge %s round %s: batch of %d, shift %s, data center at %s:%d (TLS %s), %s loop", args.edge_id,
                 spec.id, len(round_.batch.ids), spec.tag, host, port, "on" if tls else "off", chosen_loop())
        try:
            outcome = run(run_with_client(round_, client))
        except ProtocolError as exc:
            raise RoundError(failure_message(exc, tls is not None)) from exc
        outcome.checkpoint.update(bytes_sent=client.bytes_sent, bytes_received=client.bytes_received)
        outcome.metrics.update(bytes_sent=client.bytes_sent, bytes_received=client.bytes_received)
        outdir = Path(args.outdir)

        def write_parquet(handle) -> None:
            buffer = io.BytesIO()
            outcome.predictions.to_parquet(buffer, index=False)
            handle.write(buffer.getvalue())

        write_atomic(outdir / "predictions.parquet", write_parquet)
        write_json_atomic(outdir / "metrics.json", outcome.metrics)
        write_json_atomic(outdir / "checkpoint.json", outcome.checkpoint)  # last: it marks the round done
        print(summary_line(outcome))
        return 0

    return run_cli("edge", run, (RoundError, UsageError))


if __name__ == "__main__":
    sys.exit(main())
