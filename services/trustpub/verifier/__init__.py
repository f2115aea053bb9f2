"""trustpub verifier service."""
