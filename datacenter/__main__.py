"""`python -m datacenter train-base ...` and `python -m datacenter serve ...` (see docs/learning.md)."""

from __future__ import annotations

import argparse
import sys

from mlcore.atomic import write_json_atomic
from mlcore.cli import run_cli, setup_logging
from mlcore.datasets import load_dataset_and_splits
from mlcore.seeding import make_deterministic
from mlcore.settings import load_settings
from protocol.errors import UsageError

from .state import StateError, StateStore


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m datacenter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("train-base", help="train the base model (and zoo seeds), write the root state")
    base.add_argument("--config", required=True)
    base.add_argument("--state-dir", required=True)
    base.add_argument("--out", required=True, help="JSON file: checkpoint, sha256, state, metrics")
    serve = sub.add_parser("serve", help="serve the edge until SIGTERM/SIGINT or --exit-with-pid ends")
    serve.add_argument("--config", required=True)
    serve.add_argument("--state-dir", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--port-file", required=True)
    serve.add_argument("--token-file")
    serve.add_argument("--exit-with-pid", type=int)
    serve.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM); needs --tls-key")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.add_argument("--workers", type=int, default=4,
                       help="threads for drift checks, prepares and handshakes (each retraining has its own thread "
                            "and waits for a slot of the training queue, datacenter.trainings)")
    for p in (base, serve):
        p.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "serve" and (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = setup_logging("datacenter", args.verbose)

    def run() -> int:
        settings = load_settings(args.config)
        make_deterministic()
        dataset, splits = load_dataset_and_splits(settings.dataset, settings.seed)
        log.info("dataset %s: %d samples, %d classes, %d source-training", dataset.name, len(dataset.labels),
                 dataset.n_classes, len(splits.source_train))
        store = StateStore(args.state_dir)
        if args.command == "train-base":
            from .base import train_base

            result = train_base(settings, dataset, splits, store)
            write_json_atomic(args.out, result)
            log.info("wrote %s", args.out)
            return 0
        from protocol import read_token_file, run
        from protocol.tls import server_context

        from .server import serve
        from .service import DataCenter

        token = read_token_file(args.token_file) if args.token_file else None
        tls = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        log.info("serving on %s:%s (port file %s; TLS %s; %d check workers, %d training(s) at once)", args.host,
                 args.port, args.port_file, "on" if tls else "off", args.workers, settings.datacenter.trainings)
        run(serve(DataCenter(settings, dataset, splits, store), host=args.host, port=args.port,
                          port_file=args.port_file, token=token, exit_with_pid=args.exit_with_pid,
                          workers=args.workers, ssl=tls), use_uvloop=tls is None)  # see AsyncServer.start_server
        log.info("stopped")
        return 0

    return run_cli("datacenter", run, (StateError, UsageError))


if __name__ == "__main__":
    sys.exit(main())
