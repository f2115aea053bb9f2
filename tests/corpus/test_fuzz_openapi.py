"""Fuzzing the live gateway from its own OpenAPI document (schemathesis).

The gateway publishes ``GET /_/oidc/openapi.json``; schemathesis generates valid and invalid
requests for every operation in it (a bounded number each) and checks that no answer is a
5xx and that every answer conforms to the document: documented status, content type, headers
and body schema, and invalid input refused with a 4xx.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from tests.support.corpus import CorpusStack
from tests.support.fuzz import CHECKS

pytestmark = pytest.mark.slow

# Examples per generation mode, over all operations: bounded, so the whole fuzz stays in
# seconds; a fresh random sample every run.
EXAMPLES = 120


@pytest.fixture(scope="session")
def gateway_openapi(corpus_stack: CorpusStack) -> Any:
    return schemathesis.openapi.from_url(f"{corpus_stack.base_url}/_/oidc/openapi.json", timeout=10)


# schemathesis.pytest.from_fixture relies on a pytest internal that pytest 9 no longer has
# (Node._nodeid), so the schema's strategy is driven by hypothesis directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_gateway_answers_conform_to_its_openapi_document(gateway_openapi: Any, mode: GenerationMode) -> None:
    operations = {f"{op.ok().method.upper()} {op.ok().path}" for op in gateway_openapi.get_all_operations()}
    # (schemathesis leaves out the operation serving the document itself.)
    assert {"POST /_/oidc/mint-token", "POST /_/oidc/burn-token", "GET /_/oidc/audience"} <= operations
    seen: set[str] = set()

    @given(case=gateway_openapi.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # nothing written into the work tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def exchange(case: Any) -> None:
        seen.add(f"{case.method.upper()} {case.path}")
        case.call_and_validate(checks=CHECKS, timeout=10)

    exchange()
    # The sample reached most operations (they are drawn at random).
    assert len(seen) >= len(operations) // 2, (seen, operations)
