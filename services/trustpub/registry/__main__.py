from trustpub.registry.app import setup
from trustpub.registry.config import Settings
from trustpub.runtime import load, main
from trustpub.runtime.streamwatch import with_event_stream_watch

main("registry", load(Settings), with_event_stream_watch(setup))
