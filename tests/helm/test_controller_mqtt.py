"""The controller's MQTT identity: a client certificate (mqtt.controllerTls) and/or a username
with a password file (mqtt.controllerCredentials), rendered into env vars and read-only mounts,
and refused with a clear message when the broker settings cannot work with them."""
from __future__ import annotations

import kubernetes_validate
import pytest

from conftest import EVERYTHING, one
from test_render import K8S_VERSION, _env

TLS_DIR = "/etc/edgefleet/mqtt-tls"
IDENTITY_ENV = {"EDGEFLEET_MQTT_CA_FILE", "EDGEFLEET_MQTT_CERT_FILE", "EDGEFLEET_MQTT_KEY_FILE",
                "EDGEFLEET_MQTT_USERNAME", "EDGEFLEET_MQTT_PASSWORD_FILE"}
BUNDLED_TLS = ["--set", "mqtt.bundled.tls.enabled=true", "--set", "mqtt.bundled.tls.secretName=broker-tls"]
EXTERNAL_TLS = ["--set", "mqtt.mode=external", "--set", "mqtt.external.url=mqtts://broker.example:8883",
                "--set", "mqtt.controllerTls.secretName=ctl-tls"]
CREDENTIALS = ["--set", "mqtt.controllerCredentials.username=fleet-ctl",
               "--set", "mqtt.controllerCredentials.passwordSecret=mqtt-pass"]


def _pod(objs: list[dict]) -> dict:
    return one(objs, "Deployment", "-controller")["spec"]["template"]["spec"]


def _mounts(pod: dict) -> dict:
    return {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}


def _volumes(pod: dict) -> dict:
    return {v["name"]: v for v in pod["volumes"]}


def test_no_mqtt_identity_by_default(helm):
    pod = _pod(helm.objects())
    assert not IDENTITY_ENV & set(_env(pod["containers"][0]))
    assert not {"mqtt-tls", "mqtt-password"} & (set(_mounts(pod)) | set(_volumes(pod)))


def test_client_certificate_with_the_bundled_broker_uses_its_tls_listener(helm):
    objs = helm.objects("--set", "mqtt.controllerTls.secretName=ctl-tls",
                        "--set", "mqtt.bundled.service.tlsPort=18883", *BUNDLED_TLS)
    pod = _pod(objs)
    env = _env(pod["containers"][0])
    assert env["EDGEFLEET_BROKER"] == "mqtts://t-edgefleet-mosquitto.edgefleet.svc:18883"
    assert env["EDGEFLEET_MQTT_CA_FILE"] == f"{TLS_DIR}/ca.crt"
    assert env["EDGEFLEET_MQTT_CERT_FILE"] == f"{TLS_DIR}/tls.crt"
    assert env["EDGEFLEET_MQTT_KEY_FILE"] == f"{TLS_DIR}/tls.key"
    assert not {"EDGEFLEET_MQTT_USERNAME", "EDGEFLEET_MQTT_PASSWORD_FILE"} & set(env)
    assert _mounts(pod)["mqtt-tls"] == {"name": "mqtt-tls", "mountPath": TLS_DIR, "readOnly": True}
    secret = _volumes(pod)["mqtt-tls"]["secret"]
    assert secret["secretName"] == "ctl-tls"
    assert secret["defaultMode"] == 0o440
    assert sorted(i["key"] for i in secret["items"]) == ["ca.crt", "tls.crt", "tls.key"]
    assert "mqtt-password" not in _volumes(pod)


def test_client_certificate_with_an_external_broker_keeps_its_url(helm):
    env = _env(_pod(helm.objects(*EXTERNAL_TLS))["containers"][0])
    assert env["EDGEFLEET_BROKER"] == "mqtts://broker.example:8883"
    assert env["EDGEFLEET_MQTT_CERT_FILE"] == f"{TLS_DIR}/tls.crt"


def test_bundled_broker_without_controller_certificate_stays_on_the_plain_listener(helm):
    env = _env(_pod(helm.objects(*BUNDLED_TLS))["containers"][0])
    assert env["EDGEFLEET_BROKER"] == "mqtt://t-edgefleet-mosquitto.edgefleet.svc:1883"


def test_credentials_mount_the_password_as_a_file(helm):
    objs = helm.objects(*EXTERNAL_TLS, *CREDENTIALS, "--set", "mqtt.controllerCredentials.passwordKey=pw")
    pod = _pod(objs)
    container = pod["containers"][0]
    env = _env(container)
    assert env["EDGEFLEET_MQTT_USERNAME"] == "fleet-ctl"
    assert env["EDGEFLEET_MQTT_PASSWORD_FILE"] == "/etc/edgefleet/mqtt-password/password"
    # The password is never an env var value, nor read from the Secret into the environment.
    assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
                and e["valueFrom"]["secretKeyRef"]["name"] == "mqtt-pass"]
    assert _mounts(pod)["mqtt-password"] == {"name": "mqtt-password", "mountPath": "/etc/edgefleet/mqtt-password",
                                             "readOnly": True}
    secret = _volumes(pod)["mqtt-password"]["secret"]
    assert secret["secretName"] == "mqtt-pass"
    assert secret["items"] == [{"key": "pw", "path": "password"}]
    assert secret["defaultMode"] == 0o440
    # Both identities at once (a broker asking for certificate and password).
    assert env["EDGEFLEET_MQTT_KEY_FILE"] == f"{TLS_DIR}/tls.key"


def test_credentials_without_tls_render_with_a_warning(helm_bin):
    from conftest import CHART, run
    res = run([helm_bin, "install", "--dry-run", "t", str(CHART), "--set", "mqtt.mode=external",
               "--set", "mqtt.external.url=mqtt://broker.example:1883", *CREDENTIALS])
    assert res.returncode == 0, res.stderr
    assert "sends the password unencrypted" in res.stdout


@pytest.mark.parametrize("args", [
    ["--set", "mqtt.controllerTls.secretName=ctl-tls", *BUNDLED_TLS],
    [*EXTERNAL_TLS, *CREDENTIALS],
], ids=["bundled-tls", "external-tls-credentials"])
def test_identity_objects_validate_against_kubernetes_schemas(helm, args):
    for obj in helm.objects(*args):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_everything_values_use_the_controller_certificate(helm):
    objs = helm.objects(values=EVERYTHING)
    env = _env(_pod(objs)["containers"][0])
    assert env["EDGEFLEET_BROKER"].startswith("mqtts://")
    assert env["EDGEFLEET_MQTT_CA_FILE"] == f"{TLS_DIR}/ca.crt"
    conf = one(objs, "ConfigMap", "-mosquitto")["data"]["mosquitto.conf"]
    assert "listener 1883\nallow_anonymous false\nacl_file /mosquitto/config/acl-plain" in conf
