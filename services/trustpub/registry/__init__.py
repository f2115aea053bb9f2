"""trustpub registry service."""
