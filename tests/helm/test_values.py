"""Wrong values are refused with a message that says what is wrong and how to fix it."""
from __future__ import annotations

import pytest

from conftest import EVERYTHING


def _fails(helm, *args: str, values=None) -> str:
    res = helm.template_raw(*args, values=values)
    assert res.returncode != 0, f"expected helm template to fail, it rendered:\n{res.stdout[:400]}"
    return res.stderr


@pytest.mark.parametrize("flag", ["--set", "--set-string"])
def test_replicas_two_is_rejected_by_the_schema(helm, flag):
    err = _fails(helm, flag, "controller.replicas=two")
    assert "values don't meet the specifications of the schema" in err
    assert "/controller/replicas" in err
    assert "got string, want integer" in err


def test_replicas_two_is_rejected_by_lint_too(helm_bin, tmp_path):
    from conftest import CHART, run
    bad = tmp_path / "bad.yaml"
    bad.write_text('controller:\n  replicas: "two"\n')
    res = run([helm_bin, "lint", "--strict", str(CHART), "-f", str(bad)])
    assert res.returncode != 0
    assert "/controller/replicas" in res.stdout + res.stderr


def test_sqlite_with_two_replicas_fails_clearly(helm):
    err = _fails(helm, "--set", "controller.replicas=2")
    assert "database.type=sqlite supports only controller.replicas=1 (got 2)" in err
    assert "database.type=postgres" in err and "database.postgres.secretName" in err


def test_two_replicas_with_postgres_render(helm):
    objs = helm.objects("--set", "controller.replicas=2", "--set", "database.type=postgres",
                        "--set", "database.postgres.secretName=pg")
    assert any(o["kind"] == "PodDisruptionBudget" for o in objs)


@pytest.mark.parametrize("args, message", [
    (["--set", "database.type=postgres"], "database.type=postgres needs database.postgres.secretName"),
    (["--set", "mqtt.mode=external"], "mqtt.mode=external needs mqtt.external.url"),
    (["--set", "mqtt.bundled.tls.enabled=true"], "mqtt.bundled.tls.enabled=true needs mqtt.bundled.tls.secretName"),
    (["--set", "mqtt.bundled.networkPolicy.enabled=true"], "also set mqtt.bundled.tls.enabled=true"),
    (["--set", "mqtt.controllerTls.secretName=ctl"],
     "mqtt.controllerTls.secretName=ctl makes the controller connect to the bundled broker's TLS listener, "
     "which is off: also set mqtt.bundled.tls.enabled=true"),
    (["--set", "mqtt.controllerTls.secretName=ctl", "--set", "mqtt.mode=external",
      "--set", "mqtt.external.url=mqtt://broker.example:1883"],
     'mqtt.external.url must start with mqtts:// (got "mqtt://broker.example:1883")'),
    (["--set", "mqtt.controllerTls.secretName=ctl", "--set", "mqtt.mode=external",
      "--set", "mqtt.external.url=ssl://broker.example:8883"], "mqtt.external.url must start with mqtts://"),
    (["--set", "mqtt.mode=external", "--set", "mqtt.external.url=mqtts://b:8883",
      "--set", "mqtt.controllerCredentials.username=ctl"],
     'mqtt.controllerCredentials needs both username and passwordSecret, or neither (got username="ctl", '
     'passwordSecret="")'),
    (["--set", "mqtt.mode=external", "--set", "mqtt.external.url=mqtts://b:8883",
      "--set", "mqtt.controllerCredentials.passwordSecret=pw"],
     'mqtt.controllerCredentials needs both username and passwordSecret, or neither (got username="", '
     'passwordSecret="pw")'),
    (["--set", "mqtt.controllerCredentials.username=ctl", "--set", "mqtt.controllerCredentials.passwordSecret=pw"],
     "mqtt.controllerCredentials is for external brokers (mqtt.mode=external)"),
    (["--set", "mqtt.bundled.plainListenerAnonymous=false"],
     "mqtt.bundled.plainListenerAnonymous=false closes the plain listener, which the controller uses when it has "
     "no client certificate: set mqtt.controllerTls.secretName"),
])
def test_incomplete_settings_fail_clearly(helm, args, message):
    assert message in _fails(helm, *args)


@pytest.mark.parametrize("args, path", [
    (["--set", "database.type=mysql"], "/database/type"),
    (["--set", "mqtt.mode=both"], "/mqtt/mode"),
    (["--set", "controller.log.format=xml"], "/controller/log/format"),
    (["--set", "crds.install=maybe"], "/crds/install"),
    (["--set", "controller.listen=8080"], "/controller/listen"),
    (["--set", "controller.replikas=2"], "replikas"),
    (["--set", "mqtt.external.url=broker:1883"], "/mqtt/external/url"),
    (["--set", "mqtt.controllerTls=true"], "/mqtt/controllerTls"),
    (["--set", "mqtt.controllerTls.secretName=Not_A_Name"], "/mqtt/controllerTls/secretName"),
    (["--set", "mqtt.controllerTls.secretname=x"], "secretname"),
    (["--set", "mqtt.controllerCredentials.username=1"], "/mqtt/controllerCredentials/username"),
    (["--set", "mqtt.controllerCredentials.passwordKey="], "/mqtt/controllerCredentials/passwordKey"),
    (["--set", "mqtt.controllerCredentials.password=hunter2"], "additional properties 'password' not allowed"),
    (["--set", "agent.signing.trustedKeys=true"], "/agent/signing/trustedKeys"),
    (["--set", "agent.signing.existingConfigMapKey=a/b"], "/agent/signing/existingConfigMapKey"),
    (["--set", "agent.signing=on"], "/agent/signing"),
])
def test_schema_names_the_wrong_key(helm, args, path):
    err = _fails(helm, *args)
    assert path in err, err


def test_everything_values_pass_the_schema(helm):
    assert helm.template(values=EVERYTHING)
