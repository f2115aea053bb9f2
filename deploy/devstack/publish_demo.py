"""``make up``'s second demo: a release published through the upload gate into a real index.

What a GitHub Actions job does with ``uv publish --trusted-publishing always``: uv asks the
upload host for the audience, gets an OIDC token from the (development) issuer, exchanges it at
the host's ``/_/oidc/mint-token``, uploads with the minted token and burns it. Then the package
is installed back from the index with pip, and its provenance statement is fetched and verified
offline, as ``trustpub provenance verify`` does.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from deploy.devstack.index import DevCertificate, PypiServer
from deploy.devstack.issuer import DevIssuer

from trustpub.runtime import provenancecli


def write_wheel(directory: Path, project: str, version: str, module: bytes, metadata: str = "") -> Path:
    """A small valid pure-Python wheel of ``project`` in ``directory``: one module (``module``, its
    ``__init__.py``), METADATA (with the extra ``metadata`` lines), WHEEL and RECORD. The demo's, and
    the tests' uploads."""
    dist = project.replace("-", "_")
    files = {
        f"{dist}/__init__.py": module,
        f"{dist}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n{metadata}".encode()
        ),
        f"{dist}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: trustpub-devstack\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"{dist}-{version}.dist-info/RECORD,,")
        whl.writestr(f"{dist}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def build_wheel(directory: Path, project: str, version: str) -> Path:
    """A small pure-Python wheel of ``project`` whose module prints where it came from."""
    return write_wheel(
        directory,
        project,
        version,
        f'VERSION = "{version}"\n'.encode(),
        metadata="Summary: published by make up through the trustpub upload gate\n",
    )


def _tool(name: str) -> str:
    candidate = Path(sys.prefix) / "bin" / name
    return str(candidate) if candidate.exists() else name


def publish(  # noqa: PLR0913  (everything the demo shows)
    gate_url: str,
    *,
    issuer: DevIssuer,
    index: PypiServer,
    tls: DevCertificate,
    project: str,
    say: Callable[[str], None],
) -> bool:
    """Publish, install back, verify; True when every step worked."""
    version = f"0.1.{int(time.time())}"
    with tempfile.TemporaryDirectory(prefix="trustpub-demo-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work, project, version)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("UV_", "GITHUB_", "ACTIONS_"))},
            # What GitHub Actions gives a job with `id-token: write`; here the development issuer.
            "GITHUB_ACTIONS": "true",
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{issuer.base_url}/token",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": issuer.request_token,
            # The upload host's certificate is signed by the development CA.
            "SSL_CERT_FILE": str(tls.ca),
            "UV_NO_CONFIG": "1",
        }
        argv = [
            _tool("uv"),
            "publish",
            "--publish-url",
            f"{gate_url}/legacy/",
            "--trusted-publishing",
            "always",
        ]
        say(f"$ uv {' '.join(argv[1:])} {wheel.name}")
        done = subprocess.run([*argv, str(wheel)], env=env, capture_output=True, text=True, check=False)  # noqa: S603
        for line in (done.stdout + done.stderr).splitlines():
            if not line.startswith("::add-mask::"):  # the minted token, masked in a real job's log
                say(f"  uv: {line}")
        if done.returncode != 0:
            say("publishing through the gate FAILED")
            return False
        say(f"the index now holds {wheel.name}: {', '.join(index.files())}")
        target = work / "installed"
        install = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--index-url",
            f"{index.url}simple/",
            "--target",
            str(target),
            f"{project}=={version}",
        ]
        say(f"$ pip install --index-url {index.url}simple/ {project}=={version}")
        done = subprocess.run(install, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            say(f"installing it back FAILED: {done.stderr.strip()[-500:]}")
            return False
        say(f"installed {project} {version} back from the index into {target.name}/")
        downloaded = work / "downloaded"
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        download += ["--disable-pip-version-check", "--index-url", f"{index.url}simple/"]
        subprocess.run(  # noqa: S603  (the file a user would download, to verify)
            [*download, "--dest", str(downloaded), f"{project}=={version}"], capture_output=True, check=False
        )
        files = sorted(downloaded.glob("*.whl")) or [wheel]
        say(f"$ trustpub provenance verify {files[0].name} --url {gate_url} --ca {tls.ca}")
        args = argparse.Namespace(
            file=files[0],
            url=gate_url,
            project="",
            ca=tls.ca,
            jwks=None,
            statement=None,
            issuer="trustpub",
            json=False,
        )
        try:
            report = provenancecli.run(args)
        except provenancecli.ProvenanceCommandError as exc:
            say(f"verifying its provenance FAILED: {exc}")
            return False
        print(report, flush=True)  # noqa: T201
        return True
