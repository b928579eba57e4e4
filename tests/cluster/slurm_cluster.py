"""A real single-node SLURM cluster of our own for a test or a benchmark (the recipe in docs/cluster.md).

`SlurmCluster(root).start()` runs munged, slurmctld and slurmd directly (no systemd), every
file of theirs under `root`: the munge key, socket, pid, log and seed files; slurm.conf; the
controller's state and slurmd's spool. Nothing is written to /etc and no daemon of someone
else is touched or reused:

- slurm.conf is a file under `root`, named by the SLURM_CONF environment variable, which
  every SLURM command and daemon reads; `cluster.env` carries it, and sbatch passes it on to
  the job. But the executor plugin's job step (snakemake-executor-plugin-slurm-jobstep 0.6.1)
  removes every SLURM_* variable but the job's identity before its nested `srun`, and srun
  then looks for the compiled-in /etc/slurm/slurm.conf (or a DNS SRV record) and dies with
  "Could not establish a configuration source". So a copy goes to /etc/slurm/slurm.conf too,
  marked as ours; a file already there that is not ours is moved aside and put back by
  `stop()`. Hence one such cluster a host at a time.
- munged is always our own, with its own key, socket and pid file, even when another munged
  (the system's, /run/munge) is running: slurm.conf's `AuthInfo=socket=...` points slurmctld,
  slurmd, the commands and the job steps at our socket. Reusing a foreign munged would tie
  the test to a daemon whose key and lifetime it does not control.
- The controller and slurmd listen on free ports picked at start, so two clusters (a test and
  a benchmark) can run on one host at once.

`stop()` cancels the cluster's jobs, then ends each daemon by the pid in its pid file
(SIGTERM, SIGKILL after a grace period), never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: Debian's packages of the daemons and commands.
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
PARTITION = "debug"
#: Where srun looks when SLURM_CONF is unset (Debian's slurm-wlm), and the first line that marks the file as ours.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# A single-node test cluster (tests/cluster/slurm_cluster.py"


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be run here (not root, or the packages cannot be installed)."""


def ensure_installed(timeout: float = 300) -> None:
    """Install slurm-wlm and munge with apt-get when a daemon is missing; raise ClusterUnavailable if that fails."""
    if all(os.path.exists(path) for path in DAEMONS) and shutil.which("sinfo"):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("slurm-wlm/munge are not installed and installing them needs root")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("slurm-wlm/munge are not installed and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", *PACKAGES]  # the packages docs/cluster.md names
    output = ""
    for commands in ([install], [["apt-get", "update"], install]):  # the package lists may be stale or absent
        for command in commands:
            try:
                result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise ClusterUnavailable(f"{' '.join(command)} timed out after {timeout:.0f} s") from None
            output = result.stdout + result.stderr
        if result.returncode == 0 and all(os.path.exists(path) for path in DAEMONS):
            return
    raise ClusterUnavailable(f"apt-get could not install {' '.join(PACKAGES)}:\n{output[-2000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def node_memory_mb() -> int:
    """The node's RealMemory: the machine's memory less 1 GiB for the system."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages // (1024 * 1024) - 1024


@dataclass
class SlurmJob:
    """One job as `scontrol show job` reports it (kept MinJobAge seconds after it ends)."""

    id: int
    name: str
    state: str
    comment: str
    start: str
    end: str
    fields: dict[str, str]


def parse_job_line(line: str) -> dict[str, str]:
    """One line of `scontrol show job -o`: space-separated Key=Value pairs (a value may hold '=' but no space)."""
    fields = {}
    for item in line.split():
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value
    return fields


class SlurmCluster:
    """munged + slurmctld + slurmd of our own, everything under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.node = socket.gethostname().split(".")[0]
        self.pid_files = {
            "munged": self.munge_dir / "munged.pid",
            "slurmctld": self.root / "slurmctld.pid",
            "slurmd": self.root / "slurmd.pid",
        }
        self.started: list[str] = []
        self.saved_conf: Path | None = None  # someone else's /etc/slurm/slurm.conf, moved aside
        self.wrote_system_conf = False

    # ------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF: the environment for every SLURM command, daemon and snakemake run."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    # ------------------------------------------------------------------ start
    def start(self, timeout: float = 60) -> SlurmCluster:
        """Bring the cluster up; return once `sinfo` shows the node idle. Stops what it started on failure."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("the cluster's daemons run as root (SlurmUser=root); not root")
        ensure_installed()
        try:
            self._start_munged(timeout)
            self._write_conf()
            for daemon in ("slurmctld", "slurmd"):
                self._start_daemon(daemon, [f"/usr/sbin/{daemon}"], timeout)
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munged(self, timeout: float) -> None:
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o700)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            subprocess.run(["/usr/sbin/mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        # As root with --force: our files sit under a root-only temp dir the munge user could not reach.
        self._start_daemon("munged", [
            "/usr/sbin/munged", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={self.pid_files['munged']}", f"--log-file={self.munge_dir / 'munged.log'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
        ], timeout)
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run(f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}", shell=True,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged does not answer on {self.munge_socket}: {probe.stderr.strip()}")
            time.sleep(0.1)

    def _write_conf(self) -> None:
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        self.conf.write_text(f"""\
{MARKER}).
ClusterName=driftloop
SlurmctldHost={self.node}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# our own munged's socket, not /run/munge's
AuthInfo=socket={self.munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.pid_files['slurmctld']}
SlurmdPidFile={self.pid_files['slurmd']}
SlurmctldLogFile={self.root / 'log/slurmctld.log'}
SlurmdLogFile={self.root / 'log/slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
# no slurmdbd: the executor must poll with squeue (profiles/slurm), and finished jobs must stay
# visible to squeue/scontrol long enough for it (MinJobAge)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
DefMemPerCPU=1000
MinJobAge=600
NodeName={self.node} CPUs={cpus} RealMemory={node_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        # Slurm 22.05 knows no CgroupPlugin=disabled; with no cgroup.conf beside slurm.conf it autodetects.
        self._install_system_conf()

    def _install_system_conf(self) -> None:
        """Copy slurm.conf to /etc/slurm for the job steps' srun (see the module's docstring)."""
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        if SYSTEM_CONF.exists() and not SYSTEM_CONF.read_text(errors="replace").startswith(MARKER):
            self.saved_conf = SYSTEM_CONF.with_name(f"slurm.conf.saved-by-driftloop-{os.getpid()}")
            SYSTEM_CONF.rename(self.saved_conf)
        shutil.copyfile(self.conf, SYSTEM_CONF)
        self.wrote_system_conf = True

    def _restore_system_conf(self) -> None:
        if self.wrote_system_conf and SYSTEM_CONF.exists() and SYSTEM_CONF.read_text() == self.conf.read_text():
            SYSTEM_CONF.unlink()
        self.wrote_system_conf = False
        if self.saved_conf is not None:
            self.saved_conf.rename(SYSTEM_CONF)
            self.saved_conf = None

    def _start_daemon(self, name: str, command: list[str], timeout: float) -> None:
        """Run a self-daemonizing daemon; wait for its pid file."""
        pid_file = self.pid_files[name]
        pid_file.unlink(missing_ok=True)
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        self.started.append(name)
        if result.returncode != 0:
            raise RuntimeError(f"{name} did not start ({result.returncode}): {result.stderr.strip()} "
                               f"(logs under {self.root})")
        deadline = time.monotonic() + timeout
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} wrote no pid file {pid_file} (logs under {self.root})")
            time.sleep(0.05)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.command("sinfo", "-h", "-o", "%T", check=False)
            state = result.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the node is not idle after {timeout:.0f} s (sinfo: {state!r}); "
                           f"see {self.root / 'log/slurmd.log'}")

    # ------------------------------------------------------------------ jobs
    def jobs(self) -> list[SlurmJob]:
        """Every job the controller still knows (running, or finished less than MinJobAge ago)."""
        result = self.command("scontrol", "show", "job", "-o", check=False)
        jobs = []
        for line in result.stdout.splitlines():
            fields = parse_job_line(line)
            if "JobId" in fields:
                jobs.append(SlurmJob(int(fields["JobId"]), fields.get("JobName", ""), fields.get("JobState", ""),
                                     fields.get("Comment", ""), fields.get("StartTime", ""),
                                     fields.get("EndTime", ""), fields))
        return jobs

    # ------------------------------------------------------------------ stop
    def stop(self, grace: float = 10) -> None:
        """Cancel the cluster's jobs, then end slurmd, slurmctld, munged by their pid files."""
        if "slurmctld" in self.started and self.pid_alive("slurmctld"):
            self.command("scancel", "--full", "--user", "root", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self.started:
                self._stop_daemon(name, grace)
        self.started.clear()
        self._restore_system_conf()

    def pid(self, name: str) -> int | None:
        try:
            return int(self.pid_files[name].read_text().strip())
        except (OSError, ValueError):
            return None

    def pid_alive(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and process_alive(pid)

    def _stop_daemon(self, name: str, grace: float) -> None:
        pid = self.pid(name)
        if pid is None or not process_alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.1)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_bounded(command: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
                grace: float = 15) -> tuple[int, str, float]:
    """Run `command` in a session of its own; return (exit code, output, seconds).

    Past `timeout`, SIGTERM to its process group, then SIGKILL after `grace` (snakemake
    catches SIGTERM and keeps waiting for its running jobs). A killed run returns -9/-15.
    """
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        output += f"\n[run_bounded: killed after {timeout:.0f} s]"
    except BaseException:  # e.g. pytest-timeout's exception: leave no snakemake behind
        signal_group(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process.returncode, output, time.monotonic() - started


def signal_group(pgid: int, sig: int) -> None:
    """Signal the process group we started (`start_new_session`), if anything of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
