"""trustpub jwks service."""
