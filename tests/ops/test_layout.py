"""The layout that ordinary tools read (DESIGN.md "Layout"): the import layers of pyproject.toml's
``[tool.importlinter]`` cover every package of the two source roots, and the import graph they are
checked on holds the edges from the services to the libraries. ``make lint`` runs the contracts
(``lint-imports``); the wheel's contents are checked in test_image.py.
"""

from __future__ import annotations

import tomllib

import grimp
import pytest
from tests.support.ops import REPO, SERVICES

LIBRARIES = ("messages", "runtime", "providers")


def found_packages() -> set[str]:
    """The packages setuptools finds: each folder with an ``__init__.py`` under libs/trustpub and
    services/trustpub."""
    return {
        f"trustpub.{init.parent.name}"
        for root in ("libs", "services")
        for init in (REPO / root / "trustpub").glob("*/__init__.py")
    }


def import_linter() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_the_import_contracts_cover_every_package():
    assert found_packages() == {f"trustpub.{name}" for name in (*LIBRARIES, *SERVICES)}
    assert set(import_linter()["root_packages"]) == found_packages()


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*sorted(found_packages()), cache_dir=None)


@pytest.mark.parametrize("service", SERVICES)
def test_the_import_graph_sees_each_service_use_the_libraries(graph, service):
    for library in ("messages", "runtime"):
        assert graph.direct_import_exists(
            importer=f"trustpub.{service}", imported=f"trustpub.{library}", as_packages=True
        ), (service, library)
    others = [f"trustpub.{s}" for s in SERVICES if s != service]
    assert not [o for o in others if graph.chain_exists(f"trustpub.{service}", o, as_packages=True)]


def test_the_libraries_import_no_service(graph):
    for library in LIBRARIES:
        for service in SERVICES:
            assert not graph.chain_exists(f"trustpub.{library}", f"trustpub.{service}", as_packages=True)
