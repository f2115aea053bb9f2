"""The development PostgreSQL's own folder: as root the server runs as another user, which
must reach its folder; trustpub opens only its own scratch folders for it (``.run/`` and
what is below, or a folder below the system's temporary folder), never a folder of the
user's (README.md, "Development")."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from deploy.devstack import servers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another user")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _folders(*paths: Path, mode: int = 0o700) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)


def _reachable(prefix: list[str], path: Path) -> bool:
    done = subprocess.run([*prefix, "test", "-w", str(path)], check=False, timeout=30)  # noqa: S603
    return done.returncode == 0


def test_a_folder_of_the_users_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = servers._run_as()
    # tmp_path is below the system's temporary folder: say it is elsewhere, so that ``home``
    # stands for a folder of the user's.
    monkeypatch.setattr(servers.tempfile, "gettempdir", lambda: str(tmp_path / "elsewhere"))
    home = tmp_path / "home"
    _folders(home)
    data = home / "checkout" / "pg"
    _folders(data.parent, data, mode=0o755)
    with pytest.raises(servers.DevServerError, match=f"{home} is not traversable"):
        servers._chown_for(prefix, data)
    assert _mode(home) == 0o700


def test_only_the_stacks_own_run_folder_is_opened_and_the_server_owns_its_folder() -> None:
    prefix = servers._run_as()
    # Directly below the system's temporary folder: pytest's tmp_path is below a folder of
    # root's only, which counts as scratch and would be opened too.
    checkout = Path(tempfile.mkdtemp(prefix="trustpub-test-checkout-"))
    try:
        checkout.chmod(0o755)
        run = checkout / ".run"
        data = run / "pg"
        _folders(run, data)
        servers._chown_for(prefix, data)
        assert _mode(checkout) == 0o755  # unchanged: it was traversable
        assert _mode(run) == 0o701  # traverse, not list
        assert _mode(data) == 0o700
        assert data.stat().st_uid != 0
        assert _reachable(prefix, data)
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
