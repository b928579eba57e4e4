"""Named limits of the wire, with the reason for each default — the one place they live.

Every length read from the wire is checked against these before a byte of it is read
or a buffer is allocated for it, and the encoder applies the same checks, so a side
never sends what its peer would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Metadata is a small JSON object: request type, ids, a few scalars, section lengths.
DEFAULT_MAX_METADATA_BYTES = 64 * 1024
#: A frame body carries at most two DataFrames; 1 GiB holds ~3M rows of 64 float32
#: features and still fits twice in this machine's memory.
DEFAULT_MAX_BODY_BYTES = 1 << 30
#: A request has at most two sections (query_data, random_data); a response none.
DEFAULT_MAX_SECTIONS = 4
#: Metadata strings (ids, paths, messages) are short; a path is rarely past 4 KiB.
DEFAULT_MAX_STRING_CHARS = 4096
#: `extra`/`info` maps carry a handful of scalars.
DEFAULT_MAX_MAP_ITEMS = 64
#: Request types are short names (`prep_retraining` is the longest of ours).
DEFAULT_MAX_REQUEST_TYPE_CHARS = 64
#: Error messages sent to a peer; the details stay in the sender's log.
DEFAULT_MAX_ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits applied by both the encoder (to fail early) and the decoder."""

    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_sections: int = DEFAULT_MAX_SECTIONS
    max_string_chars: int = DEFAULT_MAX_STRING_CHARS
    max_map_items: int = DEFAULT_MAX_MAP_ITEMS
    max_request_type_chars: int = DEFAULT_MAX_REQUEST_TYPE_CHARS
    max_error_chars: int = DEFAULT_MAX_ERROR_CHARS

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
        if self.max_metadata_bytes > 0xFFFFFFFF:
            raise ValueError("Limits.max_metadata_bytes must fit in 32 bits")


#: Server-side defaults for connection handling (seconds and counts); see AsyncServer.
DEFAULT_IDLE_TIMEOUT = 60.0  # no request in progress and no partial frame
DEFAULT_FRAME_TIMEOUT = 120.0  # from a frame's first byte to its last
DEFAULT_AUTH_TIMEOUT = 10.0  # from accept until the first frame's head is verified
DEFAULT_WRITE_TIMEOUT = 60.0  # a reply the peer does not read for this long drops it
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 128
#: Bytes of frame bodies buffered at once across all connections of a server.
DEFAULT_MAX_BUFFERED_BYTES = 2 << 30
#: Bodies up to this size, whose DataFrames make at most DEFAULT_DECODE_INLINE_CELLS Python
#: objects (known from a schema decoded before: `dataframes.object_cells`), are decoded on the
#: event loop, the others in a worker thread. Decode time is the bytes received (compressed
#: Arrow bodies and dictionary deltas are refused, so no column is larger than the body it came
#: in, and each buffer is copied once) plus ~0.1 us an object (one a row for str and array
#: columns): a 1,000-row x 67-column frame, 0.3 MB and 1,000 objects, decodes in ~0.05 ms,
#: less than a hop to a worker thread and back (~0.05 ms on an idle loop, more on a loaded
#: one); 0.4 MB of width-1 array cells, 400k objects, took 51 ms and go to a worker.
DEFAULT_DECODE_INLINE_BYTES = 512 * 1024
DEFAULT_DECODE_INLINE_CELLS = 4096
