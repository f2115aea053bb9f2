"""Development and test infrastructure: embedded NATS and PostgreSQL, the dev OIDC issuer.

Never imported by a service in production; ``make up`` and the test suite use it.
"""
