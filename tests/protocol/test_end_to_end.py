"""Against a real AsyncServer on 127.0.0.1: message types, unpacking, hostile input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocol import AuthenticationError, RemoteError, ResponseBlock, decode_response, FrameDecoder

from conftest import request_bytes


@pytest.mark.parametrize("message_type", ["handshake", "normal", "prep_retraining", "retraining"])
def test_every_message_type(server, message_type):
    frame = pd.DataFrame({"x": np.arange(7, dtype=np.float32)})
    flag, checkpoint = server.ask(message_type, frame)
    assert (flag, checkpoint) == (message_type == "retraining", f"{message_type}:7")
    assert server.port > 0


def test_unknown_request_type_then_still_serving(server):
    with pytest.raises(RemoteError) as info:
        server.ask("exploit")
    assert info.value.code == "unknown_request_type"
    server.assert_serving()


@pytest.mark.parametrize("data, code", [
    (b"\x80\x04\x95" + b"\x00" * 100, "bad_magic"),
    (request_bytes()[:24].replace(b"DLWP\x02", b"DLWP\x07"), "bad_version"),
])
def test_hostile_bytes_get_error_response_then_still_serving(server, data, code):
    frames = FrameDecoder().feed(server.raw_exchange(data))
    assert decode_response(frames[0]).error_code == code
    server.assert_serving()


def test_header_announcing_2_to_the_40_bytes(server):
    header = request_bytes()[:24]
    huge = header[:12] + (1 << 40).to_bytes(8, "big") + header[20:]
    frames = FrameDecoder().feed(server.raw_exchange(huge))
    assert decode_response(frames[0]).error_code == "too_large"
    server.assert_serving()


def boom(message_type, query_dataframe, random_dataframe):
    raise RuntimeError("kaput 42")


def test_callback_that_raises(start_server):
    server = start_server(callback=boom)
    with pytest.raises(RemoteError, match="kaput 42") as info:
        server.ask("normal")
    assert info.value.code == "callback_error"
    with pytest.raises(RemoteError, match="kaput 42"):
        server.ask("normal")  # still serving


TOKEN = "t" * 32


@pytest.mark.parametrize("client_token", [None, "w" * 32], ids=["missing", "wrong"])
def test_bad_token_refused_then_still_serving(start_server, client_token):
    """Without a token the client gets the server's refusal; with a wrong one it refuses the
    server's unsigned refusal itself (it never trusts an unsigned reply): both say auth_failed."""
    server = start_server(token=TOKEN)
    with pytest.raises(RemoteError if client_token is None else AuthenticationError) as info:
        server.ask("normal", token=client_token)
    assert info.value.code == "auth_failed"
    server.assert_serving(token=TOKEN)


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_payload_is_not_executed(server, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    frames = FrameDecoder().feed(server.raw_exchange(pickle.dumps(Exploit(marker))))
    assert decode_response(frames[0]).error_code == "bad_magic"
    assert not marker.exists()
    server.assert_serving()


def test_32_concurrent_clients_with_several_requests(server):
    import asyncio

    async def one(i):
        client = server.client()
        async with client:
            for j in range(4):
                rows = i * 4 + j
                flag, checkpoint = await client.send_data("normal", pd.DataFrame({"x": np.arange(rows)}))
                assert (flag, checkpoint) == (False, f"normal:{rows}")
        return i

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(32))), 30)

    assert asyncio.run(main()) == list(range(32))


def test_refuses_non_loopback_without_token_or_tls():
    from protocol import AsyncServer, UsageError

    with pytest.raises(UsageError, match="non-loopback"):
        AsyncServer(lambda **kw: None, 0, host="0.0.0.0")


def test_a_checkpoint_travels_in_the_reply_signed_and_intact(start_server):
    """The model's bytes come back in the reply's `checkpoint_data` section, under the MACs."""
    blob = bytes(range(256)) * 4099  # ~1 MB, not a multiple of 8: padding must not leak into the bytes

    def callback(message_type, query_dataframe, random_dataframe):
        return ResponseBlock(True, "sha-of-it", checkpoint_data=blob if message_type == "retraining" else None)

    server = start_server(callback=callback, token=TOKEN)
    response = server.ask("retraining", token=TOKEN)
    assert response == (True, "sha-of-it") and response.checkpoint_data == blob
    assert server.ask("handshake", token=TOKEN).checkpoint_data is None  # absent section: None


def test_a_flipped_checkpoint_byte_is_refused_by_the_body_mac():
    from protocol.codec import encode_response
    from protocol.codec import check_response_head

    token = TOKEN.encode()
    wire = bytearray(b"".join(bytes(p) for p in encode_response(
        ResponseBlock(False, "x", checkpoint_data=b"weights" * 100, request_id="r"), token=token)))
    wire[-40] ^= 1  # inside the body, before the body MAC
    (frame,) = FrameDecoder(head_check=lambda head: check_response_head(head, token=token)).feed(bytes(wire))
    with pytest.raises(AuthenticationError):
        decode_response(frame, token=token)


@pytest.mark.parametrize("token", [None, TOKEN])
def test_a_large_frame_sent_from_its_own_memory_arrives_intact(start_server, token):
    """Above 1 MiB the client sends the float block from the DataFrame's memory (no joined copy)
    and the server keeps it as a view of the frame's receive buffer: both ends must still be exact."""
    rng = np.random.default_rng(7)
    rows = 6000  # 64 float32 columns: 1.5 MB, more than half the section
    sent = pd.DataFrame({"id": np.arange(rows), "path": [f"/img/{i}.png" for i in range(rows)],
                         **{f"f{j}": rng.random(rows, dtype=np.float32) for j in range(64)}})
    small = sent.iloc[:10].reset_index(drop=True)
    seen = []

    def callback(message_type, query_dataframe, random_dataframe):
        pd.testing.assert_frame_equal(query_dataframe, sent)
        pd.testing.assert_frame_equal(random_dataframe, small)
        query_dataframe.loc[0, "f0"] = -1.0  # writable, and only this column moves
        seen.append(float(query_dataframe.loc[0, "f1"]))
        return ResponseBlock(True, f"{len(query_dataframe)}")

    server = start_server(callback=callback, token=token)
    for _ in range(2):  # a new connection, then the same again
        assert server.ask("normal", sent, small, **({"token": token} if token else {})) == (True, str(rows))
    assert seen == [float(sent.loc[0, "f1"])] * 2
