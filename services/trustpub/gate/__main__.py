from trustpub.gate.app import setup
from trustpub.gate.config import Settings
from trustpub.runtime import load, main

main("gate", load(Settings), setup)
