"""Long reliability runs -> benchmarks/results/reliability.md (not a test).

    python benchmarks/reliability/reliability_bench.py                      # everything (~12 min)
    python benchmarks/reliability/reliability_bench.py --fuzz-seconds 60    # shorter fuzz
    python benchmarks/reliability/reliability_bench.py --fuzz-log LOG       # figures of a finished long run

1. Fuzz: the atheris target for `--fuzz-seconds` on a corpus seeded by fuzz/make_corpus.py;
   executions, exec/s, coverage, corpus, findings (crash files).
2. Load: one data-center-like `AsyncServer` in its own process (uvloop when installed), N edges x M
   requests with DataFrame payloads from this process; every answer checks the checksum of its own
   request's data. Throughput and p50/p99 latency; lost and mismatched must be 0.
3. Faults: the fault-injection tests (tests/reliability), with their counts and time.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "reliability")]

from reliability_harness import run_load  # noqa: E402

from protocol import read_port_file, run  # noqa: E402
from protocol.loop import loop_factory  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "reliability.md"
FUZZ = REPO / "fuzz"


# ----------------------------------------------------------------------------- fuzz
def parse_fuzz_log(text: str) -> dict:
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", text))
    progress = re.findall(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    last = progress[-1] if progress else ("0", "0", "0", "0")
    crashes = re.findall(r"Test unit written to (\S+)", text)
    exceptions = re.findall(r"=== Uncaught Python exception: ===\n(.+)", text)
    return {
        "executions": int(stats.get("number_of_executed_units", last[0])),
        "exec_per_s": int(stats.get("average_exec_per_sec", 0)),
        "coverage_edges": int(last[1]), "features": int(last[2]), "corpus": int(last[3]),
        "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
        "findings": [f"{e} ({Path(c).name})" for e, c in zip(exceptions, crashes)],
    }


def run_fuzz(seconds: int, corpus: Path) -> tuple[dict, str]:
    subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), str(corpus)], check=True)
    for file in (FUZZ / "regressions").iterdir():
        (corpus / file.name).write_bytes(file.read_bytes())
    artifacts = Path(tempfile.mkdtemp(prefix="fuzz-artifacts-"))
    command = [sys.executable, str(FUZZ / "fuzz_frame_decoder.py"), f"-max_total_time={seconds}", "-max_len=20000",
               "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(corpus)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    figures = parse_fuzz_log(result.stderr)
    figures["seconds"] = round(time.monotonic() - started)
    figures["exit_code"] = result.returncode
    return figures, " ".join(command[1:]).replace(str(REPO) + "/", "")


# ----------------------------------------------------------------------------- load
SERVE = """
import sys
sys.path[:0] = {paths!r}
import asyncio, signal
from reliability_harness import make_server
from protocol import run, write_port_file
server = make_server(token={token!r}, max_connections=256)
async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stop)
    serving = asyncio.create_task(server.start_server())
    write_port_file(sys.argv[1], await server.wait_started())
    await serving
run(main())
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def run_load_case(clients: int, requests: int, rows: int, token: str | None) -> dict:
    port_file = Path(tempfile.mkdtemp(prefix="load-")) / "port"
    code = SERVE.format(paths=[str(REPO), str(REPO / "tests" / "reliability")], token=token)
    server = subprocess.Popen([sys.executable, "-c", code, str(port_file)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("load server did not start")
            time.sleep(0.05)
        result = run(run_load(read_port_file(port_file), clients, requests, rows, token=token, deadline=600, timeout=120))
        summary = result.summary()
        summary["server_rss_mb"] = round(rss_mb(server.pid))
        summary["token"] = token is not None
        summary["first_errors"] = result.errors[:3]
        return summary
    finally:
        server.terminate()
        server.wait(30)


# ----------------------------------------------------------------------------- faults
def run_fault_tests() -> dict:
    xml = Path(tempfile.mkdtemp(prefix="faults-")) / "junit.xml"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    "tests/reliability"], cwd=REPO, capture_output=True, text=True)
    cases = ET.parse(xml).getroot().iter("testcase")
    by_file: dict[str, list[int]] = {}
    for case in cases:
        name = case.get("classname", "").split(".")[-1]
        failed = any(child.tag in ("failure", "error") for child in case)
        skipped = any(child.tag == "skipped" for child in case)
        counts = by_file.setdefault(name, [0, 0, 0])
        counts[0 if not (failed or skipped) else 1 if failed else 2] += 1
    return {"seconds": round(time.monotonic() - started, 1), "by_file": by_file}


# ----------------------------------------------------------------------------- report
def render(fuzz: dict | None, fuzz_command: str, loads: list[dict], faults: dict | None) -> str:
    lines = [
        "# Reliability figures",
        "",
        f"Produced by `python benchmarks/reliability/reliability_bench.py` on {platform.machine()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}, loop: {'uvloop' if loop_factory() else 'asyncio'}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. See docs/reliability.md for what each check means.",
        "",
    ]
    if fuzz:
        lines += [
            "## Fuzzing (atheris, coverage-guided)", "",
            "| seconds | executions | exec/s | coverage (edges) | features | corpus | peak RSS MB | findings |",
            "|---|---|---|---|---|---|---|---|",
            f"| {fuzz.get('seconds', '?')} | {fuzz['executions']:,} | {fuzz['exec_per_s']} | {fuzz['coverage_edges']} | "
            f"{fuzz['features']} | {fuzz['corpus']} | {fuzz['peak_rss_mb']} | {len(fuzz['findings'])} |",
            "", f"Command: `{fuzz_command}`" + (f" (figures parsed from its log, `{fuzz['log']}`)" if fuzz.get("log") else ""), "",
        ]
        lines += [f"- finding: {f}" for f in fuzz["findings"]] or ["- no finding: the invariant held on every input"]
        lines.append("")
    if loads:
        lines += [
            "## Load (one server process, concurrent edges on loopback)", "",
            "| edges x requests | rows/frame | token | answered ok | lost | mismatched | errors | req/s | MB/s sent | "
            "p50 ms | p99 ms | server RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in loads:
            lines.append(
                f"| {s['clients']} x {s['requests_per_client']} | {s['rows']} | {'yes' if s['token'] else 'no'} | "
                f"{s['answered_ok']} | {s['lost']} | {s['mismatched']} | {s['errors']} | {s['requests_per_s']} | "
                f"{s['MB_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['server_rss_mb']} |")
        lines += ["", "Half the edges keep one session (`async with`), half connect per request; every 5th "
                  "request carries both frames (5 columns: int64, float32, nullable Int64, string, 64 float32 "
                  "features). Each answer echoes the sha256 of the data the server decoded, compared with the "
                  "request's own. The server's callback is sync (worker thread, serialized like the data "
                  "center's), so with many edges the latency is mostly queueing: p50 ~ edges / throughput.", ""]
    if faults:
        lines += ["## Fault-injection and security tests (`python -m pytest tests/reliability`)", "",
                  "| file | passed | failed | skipped |", "|---|---|---|---|"]
        for name, (ok, failed, skipped) in sorted(faults["by_file"].items()):
            lines.append(f"| {name} | {ok} | {failed} | {skipped} |")
        lines += ["", f"Wall time: {faults['seconds']} s.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz-seconds", type=int, default=600)
    parser.add_argument("--fuzz-log", help="parse this finished run's stderr instead of fuzzing")
    parser.add_argument("--corpus", default=str(FUZZ / "corpus"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--skip-faults", action="store_true")
    args = parser.parse_args()

    fuzz, command = None, ""
    if args.fuzz_log:
        fuzz = parse_fuzz_log(Path(args.fuzz_log).read_text(errors="replace"))
        command = "python fuzz/fuzz_frame_decoder.py -max_total_time=N -max_len=20000 -print_final_stats=1 fuzz/corpus"
        fuzz["log"] = Path(args.fuzz_log).name
        match = re.search(r"Done \d+ runs in (\d+) second", Path(args.fuzz_log).read_text(errors="replace"))
        fuzz["seconds"] = int(match[1]) if match else "?"
    elif args.fuzz_seconds > 0:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed: no fuzzing (pip install atheris)", file=sys.stderr)
        else:
            fuzz, command = run_fuzz(args.fuzz_seconds, Path(args.corpus))
    if fuzz:
        print("fuzz:", fuzz)
    loads = []
    cases = [(1, 200, 16, None)]  # one edge at a time: the service time without queueing
    cases += [(args.clients, args.requests, rows, token)
              for rows, token in ((16, None), (256, None), (256, "bench-token-0123456789abcdef"))]
    for clients, requests, rows, token in cases:
        summary = run_load_case(clients, requests, rows, token)
        print("load:", summary)
        loads.append(summary)
    faults = None if args.skip_faults else run_fault_tests()
    if faults:
        print("faults:", faults)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(render(fuzz, command, loads, faults) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    bad = [s for s in loads if s["lost"] or s["mismatched"] or s["errors"]]
    return 1 if bad or (fuzz and fuzz["findings"]) else 0


if __name__ == "__main__":
    sys.exit(main())
