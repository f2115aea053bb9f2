"""trustpub minter service."""
