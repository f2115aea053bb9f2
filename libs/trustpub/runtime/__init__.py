"""The runtime kit every service runs on: config, logging, metrics, NATS endpoints, drain."""

from trustpub.runtime.config import CommonSettings, ConfigError, load
from trustpub.runtime.service import Runtime, main, new_exchange_id, serve

__all__ = ["CommonSettings", "ConfigError", "Runtime", "load", "main", "new_exchange_id", "serve"]
