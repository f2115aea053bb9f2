"""Identity providers: the trusted issuers and each provider's claim rules.

``PROVIDERS`` is the one registry of providers: the registry service, the CLI, the admin API,
publishers files and the issuers read it. A new provider is one module that builds a
:class:`~trustpub.providers.base.Provider`, plus one line below (DESIGN.md, "Providers and
publishers").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from trustpub.providers import activestate, github, gitlab, google
from trustpub.providers.base import Provider

PROVIDERS: Mapping[str, Provider] = MappingProxyType(
    {
        p.name: p
        for p in (
            github.PROVIDER,
            gitlab.PROVIDER,
            google.PROVIDER,
            activestate.PROVIDER,
        )
    }
)


def by_name(name: str, providers: Mapping[str, Provider] = PROVIDERS) -> Provider | None:
    """The provider called ``name``, or None."""
    return providers.get(name)
