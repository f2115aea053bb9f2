from trustpub.gateway.app import setup
from trustpub.gateway.config import Settings
from trustpub.runtime import load, main

main("gateway", load(Settings), setup)
