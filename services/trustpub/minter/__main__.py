from trustpub.minter.app import setup
from trustpub.minter.config import Settings
from trustpub.runtime import load, main

main("minter", load(Settings), setup)
