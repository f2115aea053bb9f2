"""docs/bus.md, the operator's guide to the bus, against what it describes: its tables are the
generated ones, its commands and options exist, and every setting it names is one."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

from tests.support.ops import REPO, SERVICES

from trustpub.messages.authorization import table
from trustpub.messages.endpoints import pair_name, pairs_of, seal_pairs
from trustpub.runtime.config import CommonSettings, env_name

GUIDE = REPO / "docs" / "bus.md"
TRUSTPUB = str(Path(sys.prefix) / "bin" / "trustpub")


def guide() -> str:
    return GUIDE.read_text()


def files_table() -> str:
    lines = ["| service | Secret | files |", "| --- | --- | --- |"]
    for svc in SERVICES:
        files = [f"{svc}.nk", *(f"{pair_name(*p)}.keys" for p in pairs_of(svc))]
        files += ["minter.jwk"] if svc == "minter" else []
        lines.append(f"| {svc} | `trustpub-bus-{svc}` | " + ", ".join(f"`{f}`" for f in files) + " |")
    return "\n".join(lines) + "\n"


def rings_table() -> str:
    lines = ["| key ring | sealed by | checked by |", "| --- | --- | --- |"]
    lines += [f"| `{pair_name(s, r)}.keys` | {s} | {r} |" for s, r in seal_pairs()]
    return "\n".join(lines) + "\n"


def test_the_permission_table_is_the_generated_one():
    assert table() in guide(), "docs/bus.md's permission table differs from the generated one: paste table()"


def test_the_tables_of_secrets_are_what_trustpub_bus_kubernetes_prints(tmp_path):
    text = guide()
    assert files_table() in text, "paste files_table() into docs/bus.md"
    assert rings_table() in text, "paste rings_table() into docs/bus.md"
    subprocess.run([TRUSTPUB, "bus", "init", str(tmp_path)], check=True, capture_output=True)  # noqa: S603
    out = subprocess.run(  # noqa: S603
        [TRUSTPUB, "bus", "kubernetes", str(tmp_path)], check=True, capture_output=True, text=True
    ).stdout
    # JSON documents, each after a `---` line.
    docs = [json.loads(part) for part in out.split("---\n") if part.strip()]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for svc in SERVICES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {svc} | `trustpub-bus-{svc}`"))
        listed = set(re.findall(r"`([^`]+)`", row.split("|")[3]))
        assert listed == set(secrets[f"trustpub-bus-{svc}"]["data"]), svc


def test_every_command_and_option_it_shows_exists():
    text = guide()
    options: dict[str, set[str]] = {}
    for action, rest in re.findall(r"trustpub bus (init|authorization|kubernetes)\b([^\n`|]*)", text):
        options.setdefault(action, set()).update(re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest))
    assert set(options) == {"init", "authorization", "kubernetes"}
    for action, used in options.items():
        usage = subprocess.run(  # noqa: S603
            [TRUSTPUB, "bus", action, "--help"], check=True, capture_output=True, text=True
        ).stdout
        for option in used:
            assert option in usage, f"trustpub bus {action} has no {option}"


def test_every_setting_it_names_is_read_by_a_service():
    known = {env_name(f.name) for f in dataclasses.fields(CommonSettings)}
    for svc in SERVICES:
        settings = importlib.import_module(f"trustpub.{svc}.config").Settings
        known |= {env_name(f.name) for f in dataclasses.fields(settings)}
    # Settings, not subjects (`$JS.API.STREAM.INFO.TRUSTPUB_EVENTS` names the stream).
    named = set(re.findall(r"(?<![.\w])TRUSTPUB_[A-Z_]+[A-Z]\b", guide()))
    assert named, "the guide names settings"
    assert named <= known, sorted(named - known)
