"""trustpub gateway service."""
