"""Secrets from files, not from command lines or the environment (README.md, "Configuration"):
every text setting takes a ``TRUSTPUB_<NAME>_FILE`` form, and the ``trustpub`` command reads the
database URL from the environment or a file, warning when a password is on its command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy.devstack.servers import free_port

from trustpub.minter.config import Settings as MinterSettings
from trustpub.registry import cli
from trustpub.registry.config import Settings as RegistrySettings
from trustpub.runtime.config import ConfigError, load

SECRET_URL = "postgresql://trustpub:s3cret-Password@127.0.0.1:{port}/trustpub"


def secret_file(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "database-url"
    path.write_text(content)
    return path


def test_a_text_setting_comes_from_the_file_its_file_form_names(tmp_path: Path) -> None:
    url = SECRET_URL.format(port=5432)
    path = secret_file(tmp_path, url + "\n")  # a Secret's file often ends with a line ending
    settings = load(RegistrySettings, {"TRUSTPUB_DATABASE_URL_FILE": str(path)})
    assert settings.database_url == url
    # Any text setting: a NATS URL with a user and password too.
    nats = secret_file(tmp_path, "tls://user:password@nats:4222")
    assert load(RegistrySettings, {"TRUSTPUB_NATS_URL_FILE": str(nats)}).nats_url.endswith("@nats:4222")


def test_both_forms_or_an_unreadable_file_are_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, SECRET_URL.format(port=5432))
    with pytest.raises(ConfigError, match="TRUSTPUB_DATABASE_URL and TRUSTPUB_DATABASE_URL_FILE"):
        load(
            RegistrySettings,
            {"TRUSTPUB_DATABASE_URL": "postgresql://x", "TRUSTPUB_DATABASE_URL_FILE": str(path)},
        )
    with pytest.raises(ConfigError, match="TRUSTPUB_DATABASE_URL_FILE: cannot read"):
        load(RegistrySettings, {"TRUSTPUB_DATABASE_URL_FILE": str(tmp_path / "missing")})


def test_a_setting_with_a_file_of_its_own_keeps_it(tmp_path: Path) -> None:
    # TRUSTPUB_MINTER_KEY_FILE is the minter's own setting (a path, read by the minter), not
    # the file form of TRUSTPUB_MINTER_KEY.
    path = tmp_path / "minter.jwk"
    settings = load(MinterSettings, {"TRUSTPUB_MINTER_KEY_FILE": str(path)})
    assert settings.minter_key_file == path
    assert settings.minter_key == ""


def _unavailable(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    status = cli.main(["project", "list", *argv])
    return status, capsys.readouterr().err


def test_the_cli_warns_about_a_password_on_its_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens: the command reports the database unavailable
    status, err = _unavailable(capsys, ["--database-url", SECRET_URL.format(port=port)])
    assert status == cli.EXIT_UNAVAILABLE
    assert "warning: a password on the command line (--database-url) is visible" in err
    assert "TRUSTPUB_DATABASE_URL_FILE" in err
    assert "s3cret-Password" not in err
    assert f":{port}/" in err  # the URL it was given is the one it used
    # Without a password, no warning.
    _, err = _unavailable(capsys, ["--database-url", f"postgresql://trustpub@127.0.0.1:{port}/trustpub"])
    assert "warning" not in err


def test_the_cli_reads_the_url_from_a_file_or_the_environments_file_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    path = secret_file(tmp_path, SECRET_URL.format(port=port) + "\n")
    monkeypatch.delenv("TRUSTPUB_DATABASE_URL", raising=False)
    status, err = _unavailable(capsys, ["--database-url-file", str(path)])
    assert status == cli.EXIT_UNAVAILABLE
    assert f":{port}/" in err
    assert "warning" not in err
    assert "s3cret-Password" not in err
    monkeypatch.setenv("TRUSTPUB_DATABASE_URL_FILE", str(path))
    status, err = _unavailable(capsys, [])
    assert status == cli.EXIT_UNAVAILABLE
    assert f":{port}/" in err
    monkeypatch.setenv("TRUSTPUB_DATABASE_URL_FILE", str(tmp_path / "missing"))
    status, err = _unavailable(capsys, [])
    assert status == cli.EXIT_USAGE
    assert "cannot read" in err
