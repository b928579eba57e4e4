"""Security checks: auth with a token (and replays), TLS, no open listening without token or TLS,
0600 token files, checkpoints that never unpickle and are verified before loading, and
checkpoint writes that a full disk cannot half-do."""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import resource
import signal
import ssl
import zipfile
from pathlib import Path

import pytest
import torch

import mlcore.checkpoints as checkpoints
from mlcore.atomic import write_json_atomic
from mlcore.checkpoints import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from mlcore.models import ModelSpec, build_model
from protocol import (AsyncClient, AuthenticationError, AsyncServer, ConnectionLost, ProtocolError, RemoteError, RequestBlock, UsageError,
                      encode_request)
from serving import ServerThread
from reliability_harness import (Faults, FaultyProxy, echo_callback, echo_request, expected_echo, make_server,
                                 payload, raw_exchange)

TOKEN = "security-test-token-0123456789abcdef"
SPEC = ModelSpec("mlp", (8, 8), 10)


# ------------------------------------------------------------------ the wire
def test_auth_is_enforced_and_a_captured_request_cannot_be_replayed() -> None:
    async def main(port: int) -> None:
        for token in (None, "another-token-of-enough-length-0000"):
            # no token: the server's refusal; a wrong one: the client refuses the unsigned refusal
            with pytest.raises(RemoteError if token is None else AuthenticationError) as caught:
                await echo_request(port, 1, token=token, timeout=5)
            assert caught.value.code == "auth_failed"
        await echo_request(port, 1, token=TOKEN)
        # an eavesdropper replays a valid signed request byte for byte (read the refusal unverified)
        frame = b"".join(bytes(p) for p in encode_request(RequestBlock("normal"), token=TOKEN.encode()))
        answers = [await raw_exchange(port, frame, token=None) for _ in range(2)]
        assert answers[0].ok and answers[1].error_code == "auth_failed" and "replay" in answers[1].error

    with ServerThread(make_server(token=TOKEN)) as running:
        asyncio.run(main(running.port))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", None, "192.168.1.10", "example.org", ["127.0.0.1", "0.0.0.0"]])
def test_refuses_to_listen_beyond_loopback_without_token_or_tls(host) -> None:
    with pytest.raises(UsageError, match="without a token or TLS"):
        AsyncServer(echo_callback, 0, host=host)
    if isinstance(host, str) and host:
        AsyncServer(echo_callback, 0, host=host, token=TOKEN)  # with a token it is the user's informed choice


def test_loopback_without_token_is_allowed() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        AsyncServer(echo_callback, 0, host=host)


# ------------------------------------------------------------------ checkpoints
class _Payload:
    """Unpickling this would create the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _malicious_files(directory: Path, marker: Path) -> list[Path]:
    torch_file = directory / "evil-torch.pt"
    torch.save({"format": checkpoints.FORMAT, "spec": SPEC.to_dict(), "state_dict": _Payload(marker)}, torch_file)
    pickle_file = directory / "evil.pkl"
    pickle_file.write_bytes(pickle.dumps(_Payload(marker)))
    # a genuine checkpoint whose data.pkl is swapped for the payload
    real, _ = save_checkpoint(build_model(SPEC, seed=0), SPEC, directory / "real")
    swapped = directory / "evil-swapped.pt"
    with zipfile.ZipFile(real) as source, zipfile.ZipFile(swapped, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps({"format": checkpoints.FORMAT, "spec": SPEC.to_dict(), "state_dict": _Payload(marker)},
                                    protocol=2)
            target.writestr(item, data)
    return [torch_file, pickle_file, swapped]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoints_never_unpickle_even_with_a_matching_sha256(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for file in _malicious_files(tmp_path, marker):
        # the attacker controls the file *and* the sha256 in checkpoint.json: only weights_only stands between
        with pytest.raises(CheckpointError):
            load_checkpoint(file, sha256_file(file))
        assert not marker.exists(), f"{file.name} ran code while loading"
    pickle.loads((tmp_path / "evil.pkl").read_bytes())  # the payload is live: plain pickle would run it
    assert marker.exists()


@pytest.fixture
def torch_load_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records calls to torch.load (which still runs): a damaged file must never reach it."""
    calls: list = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "load", spy)
    return calls


@pytest.mark.parametrize("damage", ["truncate", "bit-flip", "append"])
def test_damaged_checkpoint_is_detected_by_sha256_and_never_loaded(tmp_path: Path, damage: str, torch_load_calls) -> None:
    path, sha = save_checkpoint(build_model(SPEC, seed=1), SPEC, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "bit-flip":
        data[len(data) // 3] ^= 0x01
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, sha)
    assert torch_load_calls == []
    good, good_sha = save_checkpoint(build_model(SPEC, seed=2), SPEC, tmp_path)
    load_checkpoint(good, good_sha)
    assert len(torch_load_calls) == 1


def _state_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _assert_failed_write_left_no_trace(directory: Path, before: dict[str, bytes], previous: Path, sha: str) -> None:
    assert _state_of(directory) == before, "a failed write changed the folder (partial or temp file left)"
    load_checkpoint(previous, sha)  # the previous checkpoint is intact and verifies


def test_disk_full_at_fsync_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    previous, sha = save_checkpoint(build_model(SPEC, seed=1), SPEC, tmp_path)
    write_json_atomic(tmp_path / "registry.json", {"current": sha})
    before = _state_of(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        save_checkpoint(build_model(SPEC, seed=2), SPEC, tmp_path)
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "registry.json", {"current": "the new one"})
    monkeypatch.undo()
    _assert_failed_write_left_no_trace(tmp_path, before, previous, sha)


def test_a_real_write_failure_from_the_kernel_leaves_no_partial_file(tmp_path: Path) -> None:
    """No mock: RLIMIT_FSIZE makes the kernel refuse the write past 64 KiB (EFBIG), as a full disk would."""
    previous, sha = save_checkpoint(build_model(SPEC, seed=1), SPEC, tmp_path)
    before = _state_of(tmp_path)
    big = ModelSpec("mlp", (28, 28), 10)  # a larger checkpoint than the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError) as caught:
            save_checkpoint(build_model(big, seed=3), big, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert caught.value.errno == errno.EFBIG
    _assert_failed_write_left_no_trace(tmp_path, before, previous, sha)


# ------------------------------------------------------------------ TLS
def test_tls_with_token_serves_correctly_and_refuses_plaintext_and_untrusted_peers(tls_contexts) -> None:
    server_ctx, client_ctx = tls_contexts

    async def main(port: int, proxy_port: int) -> None:
        query = payload(4, 64)
        ok = await AsyncClient(port, token=TOKEN, ssl=client_ctx, server_hostname="127.0.0.1", timeout=10).send_data(
            "normal", query)
        assert ok.checkpoint == expected_echo("normal", query, None)
        with pytest.raises(ProtocolError):  # plaintext against TLS: no answer, a clear error, no hang
            await asyncio.wait_for(echo_request(port, 1, token=TOKEN, timeout=5), 10)
        with pytest.raises(ConnectionLost):  # a client that does not trust the certificate
            await AsyncClient(port, token=TOKEN, ssl=ssl.create_default_context(), server_hostname="127.0.0.1",
                              timeout=5, retry_for=0).send_data("handshake")
        with pytest.raises(ProtocolError):  # a byte flipped inside the TLS stream: TLS's own MAC refuses it
            await AsyncClient(proxy_port, token=TOKEN, ssl=client_ctx, server_hostname="127.0.0.1", timeout=5,
                              retry_for=0).send_data("normal", query)
        again = await AsyncClient(port, token=TOKEN, ssl=client_ctx, server_hostname="127.0.0.1", timeout=10).send_data(
            "normal", query)
        assert again.checkpoint == ok.checkpoint  # and the server keeps serving

    server = make_server(token=TOKEN, ssl=server_ctx)
    with ServerThread(server) as running, FaultyProxy(running.port, Faults(flip=("up", 2000))) as proxy:
        asyncio.run(asyncio.wait_for(main(running.port, proxy.port), 60))
    AsyncServer(echo_callback, 0, host="0.0.0.0", ssl=server_ctx)  # TLS alone also allows a non-loopback bind
