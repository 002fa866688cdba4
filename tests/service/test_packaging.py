"""What ships beside the code: the systemd unit (checked by ``systemd-analyze verify``) and
the sample configuration (checked by ``check-config``)."""

import os
import shutil
import subprocess
import sys

import pytest
from clirun import run
from servicerun import ServiceFiles

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
UNIT = os.path.join(ROOT, "contrib", "systemd", "cloud-sync.service")
SAMPLE = os.path.join(ROOT, "contrib", "cloud-sync.toml")


def test_the_unit_file_verifies(files: ServiceFiles) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("PYV_EDGE_AGENT_REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail("systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    text = open(UNIT).read()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    for option in ("StateDirectory=", "RuntimeDirectory=", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert option in text
    # verify wants each command's program to exist: this environment's cloud-sync stands in,
    # and /bin/true for kill where procps is missing (a minimal Debian root; every gateway has it).
    command = os.path.join(os.path.dirname(sys.executable), "cloud-sync")
    text = text.replace("/usr/local/bin/cloud-sync", command)
    if not os.path.exists("/bin/kill"):
        text = text.replace("/bin/kill", "/bin/true")
    unit = os.path.join(files.dir, "cloud-sync.service")
    with open(unit, "w") as handle:
        handle.write(text)
    done = subprocess.run([analyze, "verify", unit], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cloud-sync.service" not in done.stderr, done.stderr  # unknown keys are only warned about


def test_the_sample_configuration_checks(backend: str, files: ServiceFiles) -> None:
    text = open(SAMPLE).read()
    for name in ("api-key",):
        text = text.replace(f"/etc/cloud-sync/{name}", os.path.join(files.dir, name))
    text = text.replace("/var/lib/cloud-sync/queue.db", files.db).replace("/run/cloud-sync/ingest.sock", files.socket)
    with open(files.config, "w") as handle:
        handle.write(text)
    done = run(backend, "check-config", files.config)
    assert done.returncode == 0, done.stderr
