"""Shared test set-up: markers for Docker and GPU tests, and small shared fixtures.

Docker tests: in CI (CI=true) or with MINICODER_DOCKER_TESTS=1 they must run, and a missing engine
is a failure, never a silent skip. Elsewhere they skip with the reason.
GPU tests: skipped cleanly without CUDA.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_DOCKER = os.environ.get("CI", "").lower() == "true" or os.environ.get("MINICODER_DOCKER_TESTS") == "1"


def docker_client_or_reason():
    """(client, None) when a Docker engine answers, else (None, why)."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        return client, None
    except Exception as e:  # the SDK raises several unrelated types for "no engine"
        return None, f"no Docker engine answers ({type(e).__name__}: {e}); run `make docker`"


@pytest.fixture(scope="session")
def docker_client():
    client, why = docker_client_or_reason()
    if client is None:
        if REQUIRE_DOCKER:
            pytest.fail(f"Docker tests are required here (CI=true or MINICODER_DOCKER_TESTS=1) but {why}")
        pytest.skip(why)
    return client


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
