"""The corpus's direct level: the verifier's function and the provider's claim rules, in process.

No NATS, no database: the key cache is filled with the cast's public keys, and a verified
token is matched against the registered publishers' specs by the same provider functions the
registry runs (lookup key, rule table, "every rule passed").
"""

from __future__ import annotations

import importlib
import time
import tomllib
from typing import Any

from tests.corpus.corpus_keys import AUD, OTHER_PUBLISHERS, PUBLISHERS, Cast, issuers_toml

from trustpub.messages import TrustpubError
from trustpub.messages.v1 import KeySet, VerifiedToken
from trustpub.providers import github
from trustpub.providers.base import Provider
from trustpub.providers.issuers import IssuerRegistry
from trustpub.providers.rules import all_passed, failure_descriptions
from trustpub.verifier.config import Settings
from trustpub.verifier.keys import KeyCache
from trustpub.verifier.verify import Verifier


class Direct:
    """The verifier over the cast's keys, and the publishers' specs."""

    def __init__(self, cast: Cast) -> None:
        entries = tomllib.loads(issuers_toml({}))["issuer"]
        self.issuers = IssuerRegistry.from_entries(entries)
        self.cache = KeyCache(self.issuers)
        for issuer, key in cast.by_issuer().items():
            self.cache.apply(KeySet(issuer=issuer, keys=[key.public_jwk()], fetched_at=time.time()))
        self.verifier = Verifier(Settings(audience=AUD), self.issuers, self.cache)
        self.providers: dict[str, Provider] = {"github": github.PROVIDER}
        self.specs: list[tuple[str, str, dict[str, Any]]] = [
            ("github", issuer, github.validate_spec(**fields)) for issuer, _, fields in PUBLISHERS
        ]
        for name, issuer, _, fields, _ in OTHER_PUBLISHERS:
            try:
                module = importlib.import_module(f"trustpub.providers.{name}")
            except ImportError:  # a provider not built yet: its rows say so
                continue
            self.providers[name] = module.PROVIDER
            self.specs.append((name, issuer, module.validate_spec(**fields)))

    def match(self, token: VerifiedToken) -> tuple[bool, str]:
        """Whether a registered publisher of the token's issuer accepts its claims, and why not."""
        provider = self.providers.get(token.provider)
        if provider is None:
            return False, f"{token.provider} publishers are not supported"
        module = importlib.import_module(f"trustpub.providers.{token.provider}")
        try:
            key = provider.lookup_key(token.claims)
        except TrustpubError as exc:
            return False, exc.description
        reasons: list[str] = []
        candidates = [
            spec
            for name, issuer, spec in self.specs
            if name == token.provider and issuer == token.issuer and module.spec_lookup_key(spec) == key
        ]
        if not candidates:
            return False, f"no trusted publisher is registered for {provider.identity(token.claims)}"
        for spec in candidates:
            results = provider.evaluate(spec, token.claims)
            if all_passed(results):
                return True, ""
            reasons += failure_descriptions(results)
        return False, "; ".join(reasons)
