"""docs/protocol.md §8 and the code agree byte for byte: the worked example's header is read
from the document and compared with what the encoder writes for the same request."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from protocol import RequestBlock, ResponseBlock, encode_request
from protocol.codec import encode_response
from protocol.frame import VERSION

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
SENT_AT = 1764310000.0


def _example_section() -> str:
    return DOC[DOC.index("## 8. A worked example"):]


def test_the_document_names_the_version_the_code_speaks():
    assert DOC.splitlines()[0] == f"# The driftloop wire protocol, version {VERSION}"


def _documented_frames() -> list[tuple[str, bytes]]:
    """(metadata, header) of each ``` block of the example: the request, then the answer."""
    section = _example_section()
    metas = re.findall(r"metadata = (\{.*?\})\n", section)
    headers = [bytes.fromhex(h.replace("|", " ")) for h in re.findall(r"header   = ([0-9A-F |]+)\n", section)]
    assert len(metas) == len(headers) == 2
    return list(zip(metas, headers))


def test_worked_example_header_and_metadata_match_the_encoder():
    (doc_meta, doc_header), _ = _documented_frames()
    parts = encode_request(RequestBlock("handshake", request_id="abc"), clock=lambda: SENT_AT)
    header, meta = bytes(parts[0]), bytes(parts[1])
    assert meta.rstrip(b" ").decode() == doc_meta
    assert len(meta) == 88 and header == doc_header


def test_worked_example_answer_matches_the_encoder():
    _, (doc_meta, doc_header) = _documented_frames()
    parts = encode_response(ResponseBlock(False, None, info={"ready": True}, request_id="abc"))
    header, meta = bytes(parts[0]), bytes(parts[1])
    assert len(parts) == 2 and meta.rstrip(b" ").decode() == doc_meta
    assert len(meta) == 112 and header == doc_header


def test_signed_example_has_the_documented_metadata_and_head_mac():
    section = _example_section()
    doc_meta = re.search(r"metadata\n`(\{.*?\})`", section)[1]
    token = b"0123456789abcdef"
    parts = encode_request(RequestBlock("handshake", request_id="abc"), token=token, clock=lambda: SENT_AT,
                           nonce=lambda: "00112233445566778899aabbccddeeff")
    header, meta, mac = (bytes(p) for p in parts)
    assert meta.rstrip(b" ").decode() == doc_meta and len(meta) == 128
    assert header[6:8] == b"\x00\x01" and header[8:12] == (128).to_bytes(4, "big")
    assert mac == hmac.digest(token, header + meta, hashlib.sha256)  # §2.4: HMAC(token, header ‖ metadata)
    assert mac.hex() == re.search(r"HMAC-SHA256\(token, header ‖ metadata\) =\n`([0-9a-f]{64})`", section)[1]
