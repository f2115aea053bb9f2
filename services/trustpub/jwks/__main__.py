from trustpub.jwks.app import setup
from trustpub.jwks.config import Settings
from trustpub.runtime import load, main

main("jwks", load(Settings), setup)
