"""Named limits of the wire, with the reason for each default.

Every length read from the wire is checked against these before a byte of it is read
or a buffer is allocated for it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Metadata is a small JSON object: request type, ids, a few scalars, section lengths.
DEFAULT_MAX_METADATA_BYTES = 64 * 1024
#: A frame body carries at most two DataFrames; 1 GiB holds ~3M rows of 64 float32
#: features and still fits twice in this machine's memory.
DEFAULT_MAX_BODY_BYTES = 1 << 30
#: A request has at most two sections (query_data, random_data); a response at most one.
DEFAULT_MAX_SECTIONS = 4
#: Metadata strings (ids, paths, messages) are short; a path is rarely past 4 KiB.
DEFAULT_MAX_STRING_CHARS = 4096
#: `extra`/`info` maps carry a handful of scalars.
DEFAULT_MAX_MAP_ITEMS = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits applied by both the encoder (to fail early) and the decoder."""

    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_sections: int = DEFAULT_MAX_SECTIONS
    max_string_chars: int = DEFAULT_MAX_STRING_CHARS
    max_map_items: int = DEFAULT_MAX_MAP_ITEMS

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
        if self.max_metadata_bytes > 0xFFFFFFFF:
            raise ValueError("Limits.max_metadata_bytes must fit in 32 bits")
