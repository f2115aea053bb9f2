"""The fault suite (issue 11): each fault injected into a real stack under steady load.

One stack for the module (its own NATS and PostgreSQL: faults kill them), 40 fresh tokens a
second over loopback, a 2 s request deadline; the harness (bench/faults.py) restarts what a
fault killed, as Kubernetes would. After each fault: no duplicate mint, no committed mint that
a retry cannot recover, every answer audited once, every service ready again on its own and a
fresh exchange minting. `make faults` prints the same measurements at a higher rate.
"""

from __future__ import annotations

import json

import pytest
from bench.faults import FAULTS, TEST_SETTINGS, FaultStack, run_fault

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.fixture(scope="module")
async def fault_stack(tmp_path_factory):
    # Logs where pytest keeps them; the servers' data under a directory of the stack's own.
    fs = FaultStack(TEST_SETTINGS, log_dir=tmp_path_factory.mktemp("faults-logs"))
    await fs.start()
    try:
        yield fs
    finally:
        await fs.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
async def test_fault(fault_stack, fault):
    result = await run_fault(fault_stack, fault)
    print(json.dumps(result.summary()))  # shown with -rA or on failure
    violations = result.violations()
    if violations and result.harness_lagged():
        violations.append(result.harness_lagged())
    assert not violations, (
        f"{fault.describe(TEST_SETTINGS)} (logs in {fault_stack.log_dir}):\n- " + "\n- ".join(violations)
    )
