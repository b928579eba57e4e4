"""Fixtures every package's tests share (helpers in tests/serving.py)."""

from __future__ import annotations

import pytest

from serving import make_tls_contexts


@pytest.fixture(scope="session")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory):
    """A self-signed certificate for 127.0.0.1: (server context, client context trusting it)."""
    contexts = make_tls_contexts(tmp_path_factory.mktemp("tls"))
    if contexts is None:
        pytest.skip("openssl CLI not installed")
    return contexts
