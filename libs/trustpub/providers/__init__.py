"""Identity providers: the trusted issuers and each provider's claim rules."""
