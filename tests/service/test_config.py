"""The TOML file: what ``check-config`` and ``serve`` accept, and how they refuse the rest
(exit 2, naming the key and the value)."""

import grp
import os
import stat
import subprocess
import sys

import orjson
import pytest
from clirun import run
from servicerun import ServiceFiles

from pyv_edge_agent.cloud_sync.service.config import ConfigError, load
from pyv_edge_agent.cloud_sync.service.listen import unix_listener
from pyv_edge_agent.cloud_sync.service.uploaders import build_uploaders

ENDPOINT = "http://127.0.0.1:9/v1/ingest"


def test_check_config_accepts_a_good_file(backend: str, files: ServiceFiles) -> None:
    files.write(ENDPOINT, destination="max_batch_items = 50\nmax_backlog_items = 1000")
    done = run(backend, "check-config", files.config)
    assert done.returncode == 0, done.stderr
    assert "ok; destinations cloud" in done.stdout
    config = load(files.config)
    assert config.queue_options()["destinations"] == {
        "cloud": {"max_batch_items": 50, "retry_max_seconds": 1, "max_backlog_items": 1000}
    }
    assert "service-api-key" not in repr(config) and "ingest-token" not in repr(config)
    assert not os.path.exists(files.db), "checking must not make the queue file"


@pytest.mark.parametrize(
    "extra, named",
    [
        ("colour = 1", "ingest.colour: unknown key"),
        ("max_body_bytes = 0", "ingest.max_body_bytes: must be at least 1, got 0"),
        ("socket_mode = 'rw'", "ingest.socket_mode: must be int, got 'rw'"),
        ("tls_cert = 'nope.pem'", "ingest.tls_cert: cannot load the certificate and key"),
        ("tls_key = 'key.pem'", "ingest.tls_key: needs tls_cert"),
        ("[ingest.mqtt]\nhost = '127.0.0.1'\ntopic = 'a/#'\nqos = 2", "ingest.mqtt.qos: unknown key"),
        ("[ingest.mqtt]\nhost = '192.0.2.1'\ntopic = 'a/#'", "ingest.mqtt.host: plain MQTT to '192.0.2.1'"),
        (
            "[ingest.mqtt]\nhost = '127.0.0.1'\ntopic = 'a/#'\n[[ingest.mqtt.routes]]\nfilter = 'a/b'\n"
            "destinations = ['archive']",
            "ingest.mqtt.routes[0].destinations: unknown destination 'archive'",
        ),
    ],
)
def test_check_config_names_the_bad_key_and_value(backend: str, files: ServiceFiles, extra: str, named: str) -> None:
    files.write(ENDPOINT, extra)
    done = run(backend, "check-config", files.config)
    assert done.returncode == 2
    assert named in done.stderr, done.stderr


@pytest.mark.parametrize(
    "destination, queue, named",
    [
        ("max_batch_items = 0", "", "max_batch_items"),
        ("order = 'sideways'", "", "'sideways'"),
        ("endpointt = 'x'", "", "destinations.cloud.endpointt: unknown key"),
        ("", "durability = 'yes'", "durability"),
        ("", "colour = 1", "queue.colour: unknown key"),
    ],
)
def test_queue_and_destination_values_are_checked(
    files: ServiceFiles, destination: str, queue: str, named: str
) -> None:
    files.write(ENDPOINT, queue=queue, destination=destination)
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        load(files.config)


def test_uploader_values_are_checked_by_the_uploader(files: ServiceFiles) -> None:
    files.write("http://192.0.2.1/v1/ingest")
    with pytest.raises(ConfigError, match="destinations.cloud: endpoint 'http://192.0.2.1/v1/ingest' is plain http"):
        build_uploaders(load(files.config))


def test_tcp_needs_a_token_file_and_loopback(files: ServiceFiles) -> None:
    files.write(ENDPOINT)
    text = open(files.config).read()
    with open(files.config, "w") as handle:
        handle.write(text.replace('token_file = "token"\n', ""))
    with pytest.raises(ConfigError, match="ingest.token_file: required with ingest.http"):
        load(files.config)
    with open(files.config, "w") as handle:
        handle.write(text.replace("127.0.0.1:", "0.0.0.0:"))
    with pytest.raises(ConfigError, match="ingest.http: must be a loopback address"):
        load(files.config)


def test_secrets_come_from_files(files: ServiceFiles) -> None:
    files.write(ENDPOINT)
    os.unlink(os.path.join(files.dir, "api-key"))
    with pytest.raises(ConfigError, match="destinations.cloud.api_key_file: cannot read the file"):
        load(files.config)
    files.write(ENDPOINT, destination="api_key = 'inline'")
    with pytest.raises(ConfigError, match="destinations.cloud.api_key: unknown key"):
        load(files.config)


def test_a_file_that_is_not_toml(backend: str, files: ServiceFiles) -> None:
    with open(files.config, "w") as handle:
        handle.write("[queue\n")
    done = run(backend, "check-config", files.config)
    assert done.returncode == 2 and "not valid TOML" in done.stderr


def test_serve_without_the_extra_names_it(files: ServiceFiles) -> None:
    files.write(ENDPOINT)
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "from pyv_edge_agent.cloud_sync.cli import main\n"
        f"sys.exit(main(['serve', '--config', {files.config!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'pyv-edge-agent[serve]'" in done.stderr


def test_the_unix_socket_gets_its_mode_and_group_and_replaces_only_a_stale_socket(files: ServiceFiles) -> None:
    group = grp.getgrnam("daemon").gr_gid if os.getuid() == 0 else os.getgid()
    first = unix_listener(files.socket, 0o660, group)
    first.close()  # a killed run leaves its socket file behind
    second = unix_listener(files.socket, 0o640, group)
    try:
        info = os.stat(files.socket)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == group
    finally:
        second.close()
    os.unlink(files.socket)
    open(files.socket, "w").close()
    with pytest.raises(OSError, match="exists and is not a socket"):
        unix_listener(files.socket, 0o660, None)


def test_rejects_names_a_bad_line_and_skips_one_cut_short_at_the_end(backend: str, files: ServiceFiles) -> None:
    path = os.path.join(files.dir, "rejects.jsonl")
    good = b'{"at": 1.5, "topic": "sensors/x", "reason": "a JSON list, not an object", "bytes": 2}\n'
    with open(path, "wb") as handle:
        handle.write(good + good + b'{"at": 2.0, "topic": "sens')  # the crash cut the last line
    listed = run(backend, "rejects", path, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["topic"] for r in orjson.loads(listed.stdout)] == ["sensors/x", "sensors/x"]
    assert "payload" not in listed.stdout  # a sealed queue's rejects keep no payload
    with open(path, "wb") as handle:
        handle.write(good + b"garbage\n" + good)
    broken = run(backend, "rejects", path)
    assert broken.returncode == 2 and "line 2 is not a record of an MQTT rejects file" in broken.stderr
