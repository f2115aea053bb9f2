from trustpub.runtime import load, main
from trustpub.verifier.app import setup
from trustpub.verifier.config import Settings

main("verifier", load(Settings), setup)
