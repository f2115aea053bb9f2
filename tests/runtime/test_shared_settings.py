"""A setting several services read is declared and checked once (runtime/config.py): every
service's settings take it from the shared group, with one default and one message."""

from __future__ import annotations

import dataclasses

import pytest

from trustpub.gate.config import Settings as GateSettings
from trustpub.gateway.config import Settings as GatewaySettings
from trustpub.jwks.config import Settings as JwksSettings
from trustpub.minter.config import Settings as MinterSettings
from trustpub.registry.config import Settings as RegistrySettings
from trustpub.runtime import config
from trustpub.runtime.config import ConfigError, load
from trustpub.verifier.config import Settings as VerifierSettings

SHARED = (
    config.IssuersFileSettings,
    config.IssuerSettings,
    config.ExchangeSettings,
    config.LeewaySettings,
    config.KeyStalenessSettings,
    config.UploadTokenSettings,
    config.UploadTokenCheckSettings,
    config.HttpSettings,
)
SERVICES = (GatewaySettings, JwksSettings, VerifierSettings, RegistrySettings, MinterSettings, GateSettings)
GATEWAY = {"TRUSTPUB_MINTER_KEY_IDS": "a-key-id"}
GATE = {"TRUSTPUB_INDEX_UPLOAD_URL": "http://127.0.0.1:1/", "TRUSTPUB_MINTER_KEY_IDS": "a-key-id"}


def _own_fields(cls: type) -> set[str]:
    return set(vars(cls).get("__annotations__", {}))


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.__module__)
def test_no_service_declares_a_shared_setting_again(service: type) -> None:
    shared = set().union(*(_own_fields(group) for group in SHARED))
    fields = {f.name for f in dataclasses.fields(service)}
    again = (_own_fields(service) & shared) - {"http_port"}  # each listener has its own port
    assert not again, f"{service.__module__} declares {sorted(again)} again"
    for group in SHARED:
        if _own_fields(group) & fields:
            assert issubclass(service, group), f"{service.__module__} has part of {group.__name__}"


@pytest.mark.parametrize(
    ("service", "env", "message"),
    [
        (VerifierSettings, {"TRUSTPUB_LEEWAY": "301"}, "TRUSTPUB_LEEWAY must be between 0 and 300 seconds"),
        (VerifierSettings, {"TRUSTPUB_AUDIENCE": ""}, "TRUSTPUB_AUDIENCE must not be empty"),
        (VerifierSettings, {"TRUSTPUB_KEY_STALENESS": "0"}, "TRUSTPUB_KEY_STALENESS must be positive"),
        (JwksSettings, {"TRUSTPUB_KEY_STALENESS": "-1"}, "TRUSTPUB_KEY_STALENESS must be positive"),
        (
            GateSettings,
            {**GATE, "TRUSTPUB_REQUEST_TIMEOUT": "61"},
            "TRUSTPUB_REQUEST_TIMEOUT must be at most 60 s",
        ),
        (
            GateSettings,
            {**GATE, "TRUSTPUB_REQUEST_TIMEOUT": "0"},
            "TRUSTPUB_REQUEST_TIMEOUT must be positive",
        ),
        (GateSettings, {**GATE, "TRUSTPUB_MINTER_KEY_IDS": ""}, "TRUSTPUB_MINTER_KEY_IDS is required"),
        (GateSettings, {**GATE, "TRUSTPUB_INDEX_TIMEOUT": "0"}, "TRUSTPUB_INDEX_TIMEOUT must be positive"),
        (RegistrySettings, {"TRUSTPUB_LEEWAY": "-1"}, "TRUSTPUB_LEEWAY must be between 0 and 300 seconds"),
        (GatewaySettings, {**GATEWAY, "TRUSTPUB_AUDIENCE": ""}, "TRUSTPUB_AUDIENCE must not be empty"),
        (
            GatewaySettings,
            {**GATEWAY, "TRUSTPUB_REQUEST_TIMEOUT": "61"},
            "TRUSTPUB_REQUEST_TIMEOUT must be at most 60 s",
        ),
        (GatewaySettings, {}, "TRUSTPUB_MINTER_KEY_IDS is required"),
    ],
)
def test_a_shared_check_refuses_with_one_message(service: type, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(service, env)


def test_the_defaults_are_the_documented_ones() -> None:
    verifier, jwks, minter = load(VerifierSettings, {}), load(JwksSettings, {}), load(MinterSettings, {})
    gate = load(GateSettings, GATE)
    gateway, registry = load(GatewaySettings, GATEWAY), load(RegistrySettings, {})
    assert (verifier.audience, verifier.leeway, verifier.enabled) == ("trustpub", 30, True)
    assert (gateway.audience, gateway.enabled, gateway.request_timeout) == ("trustpub", True, 5.0)
    assert (gateway.http_host, gateway.http_port, registry.leeway) == ("127.0.0.1", 8000, 30)
    assert verifier.key_staleness == jwks.key_staleness == 86400.0
    assert (minter.token_prefix, minter.token_issuer, minter.token_audience) == (
        "trustpub-",
        "trustpub",
        "trustpub-index",
    )
    assert (gate.token_issuer, gate.token_audience, gate.request_timeout) == (
        "trustpub",
        "trustpub-index",
        5.0,
    )
    assert (gate.http_host, gate.http_port) == ("127.0.0.1", 8001)
