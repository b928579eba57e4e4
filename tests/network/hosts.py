"""Another network host on this machine, and certificates for it, made by the test itself.

`OtherHost` is a network namespace joined to the root namespace by a veth pair with
addresses of its own (10.213.k.0/30, k from the pid, on links that exist only for the
test), torn down by name after; processes started in it run with a private tmpfs as their
working directory, so nothing on disk is shared with the test's other processes.
`CertificateAuthority` makes a CA and issues server certificates with openssl.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path


class HostUnavailable(Exception):
    """This machine cannot make another host (not root, no `ip`, no namespaces): the test skips."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise HostUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


class OtherHost:
    """A network namespace at `address`, reached from the root namespace through `local_address`."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise HostUnavailable("creating a network namespace needs root")
        for tool in ("ip", "mount"):
            if shutil.which(tool) is None:
                raise HostUnavailable(f"`{tool}` is not installed")
        pid = os.getpid()
        self.name = f"dltest{pid}"
        self.link, self.peer_link = f"dl{pid}h", f"dl{pid}n"  # at most 15 characters
        subnet = pid % 250
        self.local_address, self.address = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "OtherHost":
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.link, "type", "veth", "peer", "name", self.peer_link)
            _ip("link", "set", self.peer_link, "netns", self.name)
            _ip("addr", "add", f"{self.local_address}/30", "dev", self.link)
            _ip("link", "set", self.link, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.peer_link)
            _ip("-n", self.name, "link", "set", self.peer_link, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self._remove()
            raise
        return self

    def start(self, script: str, private_dir: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Run the shell `script` in the namespace, in `private_dir` mounted as a fresh tmpfs that
        only this process (and its children) sees; `exec` its last command to keep the pid."""
        private_dir.mkdir(parents=True, exist_ok=True)
        wrapped = f"mount -t tmpfs -o size=512m driftloop-test {private_dir} && cd {private_dir} && {script}"
        with open(log, "wb") as out:
            process = subprocess.Popen(["ip", "netns", "exec", self.name, "sh", "-c", wrapped], stdout=out,
                                       stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.processes.append(process)
        return process

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:  # ours, by pid: SIGTERM, then SIGKILL
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self._remove()

    def _remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.link], capture_output=True, timeout=30)  # also removes the peer
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


class CertificateAuthority:
    """A CA of the test's own (`ca.pem`) that issues certificates for IP addresses."""

    def __init__(self, folder: Path, name: str) -> None:
        if shutil.which("openssl") is None:
            raise HostUnavailable("`openssl` is not installed")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = folder / "ca-key.pem", folder / "ca.pem"
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
                      "-days", "1", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign")

    def issue(self, address: str) -> tuple[Path, Path]:
        """(certificate, key) for a server at `address`, signed by this CA."""
        key, request, cert = (self.folder / f"{address}-{kind}.pem" for kind in ("key", "csr", "cert"))
        extensions = self.folder / f"{address}.ext"
        extensions.write_text(f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth\n")
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", f"/CN={address}")
        self._openssl("x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
                      "-out", cert, "-days", "1", "-extfile", extensions)
        return cert, key

    @staticmethod
    def _openssl(*args: object) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
