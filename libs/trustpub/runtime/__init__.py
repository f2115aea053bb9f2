"""The runtime kit every service runs on: config, logging, metrics, NATS endpoints, drain."""

from trustpub.runtime.config import CommonSettings, ConfigError, load
from trustpub.runtime.service import (
    Forward,
    Runtime,
    bound_port,
    current_delivery,
    main,
    new_exchange_id,
    serve,
)

__all__ = [
    "CommonSettings",
    "ConfigError",
    "Forward",
    "Runtime",
    "bound_port",
    "current_delivery",
    "load",
    "main",
    "new_exchange_id",
    "serve",
]
