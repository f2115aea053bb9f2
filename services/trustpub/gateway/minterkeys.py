"""The minter's pinned public keys: shared with the upload gate, so they live in the runtime kit
(``trustpub.runtime.minterkeys``)."""

from trustpub.runtime.minterkeys import MISSING_RETRY_S, Fetch, MinterKeys

__all__ = ["MISSING_RETRY_S", "Fetch", "MinterKeys"]
