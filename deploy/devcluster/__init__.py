"""What the Tiltfile makes for the dev overlay at `tilt up` (never committed: see nats_tls.py)."""
