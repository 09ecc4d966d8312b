"""The bundled Mosquitto configuration, run for real: the rendered mosquitto.conf and ACLs are
started with the local mosquitto binary (TLS with client certificates made by openssl), and
mosquitto_pub/mosquitto_sub check the per-device isolation the chart README documents."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import one, run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    p = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    assert p, f"{name} not found: apt-get install -y mosquitto mosquitto-clients openssl (run-tests.sh does it)"
    return p


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run([_binary("openssl"), *args], cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _make_certs(d: Path, clients: list[str]) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=edgefleet-test-ca", cwd=d)
    ext = d / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for cn, extra in [("tls", ["-extfile", str(ext)])] + [(c, []) for c in clients]:
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{cn}.key", "-out", f"{cn}.csr",
                 "-subj", f"/CN={'localhost' if cn == 'tls' else cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{cn}.crt", "-days", "2", *extra, cwd=d)


class Broker:
    def __init__(self, helm, tmp: Path, *values: str, clients=("dev-a", "dev-b", "edgefleet-controller")):
        self.plain, self.tls = _free_port(), _free_port()
        self.dir = tmp
        cm = one(helm.objects("--set", "mqtt.bundled.tls.enabled=true", "--set", "mqtt.bundled.tls.secretName=x",
                              "--set", f"mqtt.bundled.service.port={self.plain}",
                              "--set", f"mqtt.bundled.service.tlsPort={self.tls}", *values), "ConfigMap", "-mosquitto")
        (tmp / "data").mkdir()
        (tmp / "certs").mkdir()
        _make_certs(tmp / "certs", list(clients))
        for name, text in cm["data"].items():
            text = (text.replace("/mosquitto/config/", f"{tmp}/").replace("/mosquitto/data/", f"{tmp}/data/")
                    .replace("/mosquitto/certs/", f"{tmp}/certs/"))
            (tmp / name).write_text(text)
        conf = tmp / "mosquitto.conf"
        if os.getuid() == 0:
            # Test-only: mosquitto started as root would switch to user "mosquitto", which cannot
            # read the pytest temp dir (in the pod it runs as uid 1883 from the start).
            conf.write_text("user root\n" + conf.read_text())
        self.log = open(tmp / "mosquitto.log", "w")
        self.proc = subprocess.Popen([_binary("mosquitto"), "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        for port in (self.plain, self.tls):
            while True:
                assert self.proc.poll() is None, (tmp / "mosquitto.log").read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, (tmp / "mosquitto.log").read_text()
                    time.sleep(0.05)

    def args(self, who: str | None) -> list[str]:
        """Connection flags: None = anonymous on the plain port (the controller in the chart);
        a name = that client certificate on the TLS port; "nocert" = TLS without a certificate."""
        if who is None:
            return ["-h", "127.0.0.1", "-p", str(self.plain)]
        c = self.dir / "certs"
        base = ["-h", "localhost", "-p", str(self.tls), "--cafile", str(c / "ca.crt")]
        return base if who == "nocert" else base + ["--cert", str(c / f"{who}.crt"), "--key", str(c / f"{who}.key")]

    def pub(self, who, topic, msg, retain=True) -> subprocess.CompletedProcess:
        return run([_binary("mosquitto_pub"), *self.args(who), "-q", "1", "-t", topic, "-m", msg,
                    *(["-r"] if retain else [])])

    def sub_one(self, who, topic, wait=2) -> str | None:
        """The first (retained) message on topic, or None when nothing arrives in `wait` s."""
        res = run([_binary("mosquitto_sub"), *self.args(who), "-q", "1", "-t", topic, "-C", "1", "-W", str(wait)])
        return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def broker(helm, tmp_path_factory):
    b = Broker(helm, tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.stop()


D = "edgefleet/v1/devices"


def test_controller_reaches_every_device(broker):
    assert broker.pub(None, f"{D}/dev-a/desired", "desired-a").returncode == 0
    assert broker.pub(None, f"{D}/dev-b/desired", "desired-b").returncode == 0
    assert broker.sub_one("dev-a", f"{D}/dev-a/desired") == "desired-a"
    assert broker.sub_one("dev-b", f"{D}/dev-b/desired") == "desired-b"


def test_device_cannot_read_another_devices_topics(broker):
    broker.pub(None, f"{D}/dev-b/desired", "desired-b")
    assert broker.sub_one("dev-a", f"{D}/dev-b/desired") is None
    assert broker.sub_one("dev-a", f"{D}/+/desired") in (None, "desired-a")


def test_device_publishes_only_its_own_channels(broker):
    assert broker.pub("dev-a", f"{D}/dev-a/hello", "hello-a").returncode == 0
    assert broker.sub_one(None, f"{D}/dev-a/hello") == "hello-a"
    # Denied publishes are dropped by the broker (no error for QoS 0/1 in MQTT 3.1.1).
    broker.pub("dev-a", f"{D}/dev-b/hello", "forged")
    assert broker.sub_one(None, f"{D}/dev-b/hello", wait=1) is None
    broker.pub("dev-a", f"{D}/dev-a/desired", "self-assigned")
    assert broker.sub_one(None, f"{D}/dev-a/desired") != "self-assigned"


def test_devices_read_but_cannot_forge_controller_presence(broker):
    presence = "edgefleet/v1/controllers/edgefleet-controller-0"
    assert broker.pub(None, presence, '{"v":1,"online":true}').returncode == 0
    assert broker.sub_one("dev-a", "edgefleet/v1/controllers/+") == '{"v":1,"online":true}'
    broker.pub("dev-a", presence, '{"v":1,"online":false}')
    assert broker.sub_one(None, presence) == '{"v":1,"online":true}'


def test_sessions_and_retained_messages_are_saved_often(broker):
    conf = (broker.dir / "mosquitto.conf").read_text()
    assert "autosave_interval 10\n" in conf


def test_a_controller_subscribing_gets_every_retained_device_message(broker):
    """A restarted controller's wildcard subscription replays every device's retained hello at
    once; Mosquitto's default max_queued_messages (1000) would drop all but ~1020 of them."""
    import paho.mqtt.client as mqtt

    devices = 3000
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet")
    client.connect("127.0.0.1", broker.plain)
    client.loop_start()
    try:
        sent = [client.publish(f"{D}/fleet-{i}/hello", f"fleet-{i}", qos=1, retain=True) for i in range(devices)]
        for message in sent:
            message.wait_for_publish(timeout=30)
    finally:
        client.loop_stop()
        client.disconnect()
    res = run([_binary("mosquitto_sub"), *broker.args(None), "-q", "1", "-t", f"{D}/+/hello",
               "-C", str(devices + 10), "-W", "5"])
    received = {line for line in res.stdout.splitlines() if line.startswith("fleet-")}
    assert len(received) == devices, f"{len(received)} of {devices} retained hellos arrived"


def test_controller_certificate_user_has_full_access_on_tls(broker):
    broker.pub("edgefleet-controller", f"{D}/dev-b/desired", "via-tls")
    assert broker.sub_one("dev-b", f"{D}/dev-b/desired") == "via-tls"
    broker.pub("dev-b", f"{D}/dev-b/state", "state-b")
    assert broker.sub_one("edgefleet-controller", f"{D}/+/state") == "state-b"


def test_controllers_share_device_telemetry_under_the_acl(broker):
    """The controller's telemetry subscription with a share group (EDGEFLEET_TELEMETRY_SHARE_GROUP,
    MQTT 5 `$share/<group>/<filter>`) passes the ACL on the plain and the TLS listener."""
    for who in (None, "edgefleet-controller"):
        topic = f"$share/edgefleet-controllers/{D}/+/telemetry"
        sub = subprocess.Popen([_binary("mosquitto_sub"), *broker.args(who), "-V", "mqttv5", "-q", "1",
                                "-t", topic, "-C", "1", "-W", "10"], stdout=subprocess.PIPE, text=True)
        # shared subscriptions get no retained messages: publish until the subscriber has one
        while sub.poll() is None:
            broker.pub("dev-a", f"{D}/dev-a/telemetry", f"window-{who}", retain=False)
            time.sleep(0.2)
        assert sub.stdout.read().strip() == f"window-{who}", f"{who}: exit {sub.returncode}"


def test_tls_listener_requires_a_client_certificate(broker):
    res = run([_binary("mosquitto_pub"), *broker.args("nocert"), "-t", f"{D}/x/hello", "-m", "x"])
    assert res.returncode != 0


# The chart as README recommends once the controller has a client certificate: controllerTls
# set, plain listener not anonymous; and a non-default controllerUsername, so the ACL is shown
# to follow the value (a certificate with the default CN is then just another device).
@pytest.fixture(scope="module")
def closed_broker(helm, tmp_path_factory):
    b = Broker(helm, tmp_path_factory.mktemp("mosquitto-closed"),
               "--set", "mqtt.controllerTls.secretName=ctl", "--set", "mqtt.bundled.plainListenerAnonymous=false",
               "--set", "mqtt.bundled.controllerUsername=fleet-ctl",
               clients=("dev-a", "dev-b", "fleet-ctl", "edgefleet-controller"))
    yield b
    b.stop()


def test_closed_plain_listener_refuses_anonymous_clients(closed_broker):
    res = closed_broker.pub(None, f"{D}/dev-a/desired", "anonymous")
    assert res.returncode != 0
    assert "not authori" in (res.stdout + res.stderr).lower(), res.stdout + res.stderr
    assert closed_broker.sub_one(None, f"{D}/#", wait=1) is None


def test_controller_certificate_has_full_access_on_the_closed_broker(closed_broker):
    for dev in ("dev-a", "dev-b"):
        assert closed_broker.pub("fleet-ctl", f"{D}/{dev}/desired", f"desired-{dev}").returncode == 0
        assert closed_broker.sub_one(dev, f"{D}/{dev}/desired") == f"desired-{dev}"
    assert closed_broker.pub("dev-b", f"{D}/dev-b/telemetry", "telemetry-b").returncode == 0
    assert closed_broker.sub_one("fleet-ctl", f"{D}/+/telemetry") == "telemetry-b"


def test_device_certificate_cannot_use_another_devices_prefix_on_the_closed_broker(closed_broker):
    for channel in ("hello", "status", "state", "telemetry"):
        closed_broker.pub("dev-a", f"{D}/dev-b/{channel}", "forged")
        assert closed_broker.sub_one("fleet-ctl", f"{D}/dev-b/{channel}", wait=1) != "forged"
    # The default controller CN is not the configured controllerUsername: no full access.
    closed_broker.pub("edgefleet-controller", f"{D}/dev-a/desired", "impostor")
    assert closed_broker.sub_one("dev-a", f"{D}/dev-a/desired") != "impostor"


def test_publishes_larger_than_every_client_reads_are_refused(broker, tmp_path):
    """EdgeFleet clients read packets up to 256 KiB + 4 KiB; the broker refuses anything over
    256 KiB + 2 KiB (max_packet_size 264192), so no accepted message can break a subscriber."""
    fits, too_big = tmp_path / "fits", tmp_path / "too-big"
    fits.write_bytes(b"x" * (256 * 1024))
    too_big.write_bytes(b"x" * (300 * 1024))
    topic = f"{D}/dev-a/hello"
    pub = lambda f: run([_binary("mosquitto_pub"), *broker.args("dev-a"), "-q", "1", "-t", topic,
                         "-f", str(f), "-r"])
    assert pub(fits).returncode == 0
    assert pub(too_big).returncode != 0
    got = run([_binary("mosquitto_sub"), *broker.args(None), "-q", "1", "-t", topic, "-C", "1", "-W", "2",
               "-N"])
    assert len(got.stdout) == 256 * 1024
