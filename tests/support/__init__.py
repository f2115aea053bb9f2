"""What the tests share besides fixtures: conftest.py files hold only fixtures and hooks, and a
test imports its helpers from here, one module a topic.

- ``waiting``: waiting for a condition, never for a fixed time (``until``, ``bounded``, ``WAIT_S``),
  or not at all (``Clock``, moved by the test)
- ``bus``: the suite's NATS, a pool of subject roots, connections as any identity
- ``services``: a service in this process (``running``), a database of its own, ``AUDIENCE``
- ``e2e``, ``gate``, ``live``: the whole stack as processes (tests/e2e, the gate, tests/ops)
- ``corpus``: the corpus's own stack, its probe and raw sends (tests/corpus)
- ``registry``, ``migrations``, ``jwks``, ``keys``: helpers of those services' tests
- ``ops``: the repository's paths and the operations tools
"""

import pkgutil

import pytest

# Helpers assert too: a failing one says what it compared, as an assert in a test or a
# conftest.py does (pytest rewrites only those by itself). Each module, before it is imported.
pytest.register_assert_rewrite(*(f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__)))
