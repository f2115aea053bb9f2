from trustpub.registry.app import setup
from trustpub.registry.config import Settings
from trustpub.runtime import load, main

main("registry", load(Settings), setup)
