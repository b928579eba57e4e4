"""Against a real AsyncServer on 127.0.0.1: message types, unpacking, hostile input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protocol import RemoteError, decode_response, FrameDecoder

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
    (request_bytes()[:24].replace(b"DLWP\x01", b"DLWP\x07"), "bad_version"),
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
    server = start_server(token=TOKEN)
    with pytest.raises(RemoteError) as info:
        server.ask("normal", token=client_token)
    assert info.value.code == "auth_failed"
    server.assert_serving(token=TOKEN)
