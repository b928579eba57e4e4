"""The edge <-> data-center protocol: the original API on a framed, versioned, authenticated wire.

No pickle, no torch. See docs/protocol.md for the byte-by-byte format.
"""

from .auth import new_token
from .blocks import MESSAGE_TYPES, MessageType, RequestBlock, ResponseBlock
from .client import AsyncClient
from .codec import decode_request, decode_response, encode_request, encode_response
from .dataframes import decode_dataframe, encode_dataframe
from .errors import (
    AuthenticationError,
    ConnectionLost,
    LimitExceeded,
    PeerError,
    ProtocolError,
    RemoteError,
    UsageError,
)
from .files import create_token_file, read_port_file, read_token_file, write_port_file
from .conversation import (
    BodyBudget, ClientConversation, ConnectionClosed, RequestReceived, ResponseReceived, ServerConversation,
)
from .frame import VERSION as PROTOCOL_VERSION
from .frame import FrameDecoder, RawFrame
from .limits import Limits
from .loop import run
from .server import AsyncServer

__all__ = [
    "AsyncClient", "AsyncServer", "AuthenticationError", "BodyBudget", "ClientConversation", "ConnectionClosed",
    "ConnectionLost", "RequestReceived", "ResponseReceived", "ServerConversation", "FrameDecoder", "LimitExceeded",
    "Limits", "MESSAGE_TYPES", "MessageType", "PROTOCOL_VERSION", "PeerError", "ProtocolError", "RawFrame",
    "RemoteError", "RequestBlock", "ResponseBlock", "UsageError", "create_token_file", "decode_dataframe",
    "decode_request", "decode_response", "encode_dataframe", "encode_request", "encode_response", "new_token",
    "read_port_file", "read_token_file", "run", "write_port_file",
]
