"""Fixtures of the jwks tests."""

from __future__ import annotations

import pytest
from tests.support.jwks import JwksTest


@pytest.fixture
def jw(dev_issuer, issuers_file, common, bus, subject_root) -> JwksTest:
    """The dev issuer (discovery on loopback), NATS, this test's root and a movable clock."""
    return JwksTest(dev_issuer, issuers_file, common, bus, subject_root)
