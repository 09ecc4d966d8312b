"""agent.signing: the trusted ed25519 keys reach the agent DaemonSet as a read-only file, bad
key text is refused at render time (in the format the agent parses), and the README's openssl
commands make a signature that verifies against the public key the chart is given."""
from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from conftest import CHART, EVERYTHING, find, one
from test_render import _env

AGENT = ["--set", "agent.enabled=true"]
KEYS_FILE = "/etc/edgefleet-agent/signing/trusted-keys"


def _openssl(*args: str, cwd: Path, input: bytes | None = None) -> bytes:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, input=input)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """Two ed25519 key pairs (a, b) and an RSA public key, made by openssl."""
    d = tmp_path_factory.mktemp("keys")
    for name in ("a", "b"):
        _openssl("genpkey", "-algorithm", "ed25519", "-out", f"{name}.pem", cwd=d)
        _openssl("pkey", "-in", f"{name}.pem", "-pubout", "-out", f"{name}.pub", cwd=d)
    _openssl("genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024", "-out", "rsa.pem", cwd=d)
    _openssl("pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub", cwd=d)
    return d


def _raw_b64(d: Path, name: str) -> str:
    """The base64 raw 32-byte form of a public key (the last 32 bytes of its DER SPKI)."""
    der = _openssl("pkey", "-in", f"{name}.pub", "-pubin", "-outform", "DER", cwd=d)
    return base64.b64encode(der[-32:]).decode()


def _agent(objs: list[dict]) -> tuple[dict, dict]:
    pod = one(objs, "DaemonSet")["spec"]["template"]
    return pod, pod["spec"]["containers"][0]


def test_no_trusted_keys_by_default(helm):
    objs = helm.objects(*AGENT)
    pod, c = _agent(objs)
    assert "EDGEFLEET_AGENT_TRUSTED_KEYS_FILE" not in _env(c)
    assert "trusted-keys" not in {v["name"] for v in pod["spec"]["volumes"]}
    assert "checksum/trusted-keys" not in pod["metadata"].get("annotations", {})
    assert not find(objs, "ConfigMap", "-trusted-keys")


def test_inline_keys_become_a_mounted_configmap(helm, keys):
    text = (keys / "a.pub").read_text() + f"# second key, raw\n{_raw_b64(keys, 'b')}\n"
    f = keys / "trusted.txt"
    f.write_text(text)
    objs = helm.objects(*AGENT, "--set-file", f"agent.signing.trustedKeys={f}")
    cm = one(objs, "ConfigMap", "-agent-trusted-keys")
    assert cm["metadata"]["name"] == "t-edgefleet-agent-trusted-keys"
    assert cm["data"] == {"trusted-keys": text}
    pod, c = _agent(objs)
    assert _env(c)["EDGEFLEET_AGENT_TRUSTED_KEYS_FILE"] == KEYS_FILE
    assert {"name": "trusted-keys", "mountPath": "/etc/edgefleet-agent/signing", "readOnly": True} in c["volumeMounts"]
    vol = {v["name"]: v for v in pod["spec"]["volumes"]}["trusted-keys"]
    assert vol["configMap"] == {"name": "t-edgefleet-agent-trusted-keys",
                                "items": [{"key": "trusted-keys", "path": "trusted-keys"}]}
    # Another key set rolls the agents.
    other = helm.objects(*AGENT, "--set-file", f"agent.signing.trustedKeys={keys / 'b.pub'}")
    checksum = pod["metadata"]["annotations"]["checksum/trusted-keys"]
    assert re.fullmatch("[0-9a-f]{64}", checksum)
    assert _agent(other)[0]["metadata"]["annotations"]["checksum/trusted-keys"] != checksum


def test_existing_configmap_is_mounted_by_name_and_key(helm):
    objs = helm.objects(*AGENT, "--set", "agent.signing.existingConfigMap=fleet-keys",
                        "--set", "agent.signing.existingConfigMapKey=ed25519.pub",
                        "--set", "agent.podAnnotations.team=ml")
    assert not find(objs, "ConfigMap", "-trusted-keys")
    pod, c = _agent(objs)
    assert _env(c)["EDGEFLEET_AGENT_TRUSTED_KEYS_FILE"] == KEYS_FILE
    vol = {v["name"]: v for v in pod["spec"]["volumes"]}["trusted-keys"]
    assert vol["configMap"] == {"name": "fleet-keys", "items": [{"key": "ed25519.pub", "path": "trusted-keys"}]}
    assert pod["metadata"]["annotations"] == {"team": "ml"}


def test_keys_without_the_agent_render_nothing(helm, keys):
    objs = helm.objects("--set-file", f"agent.signing.trustedKeys={keys / 'a.pub'}")
    assert not find(objs, "ConfigMap", "-trusted-keys") and not find(objs, "DaemonSet")


def test_everything_values_trust_a_key(helm):
    objs = helm.objects(values=EVERYTHING)
    assert "BEGIN PUBLIC KEY" in one(objs, "ConfigMap", "-agent-trusted-keys")["data"]["trusted-keys"]
    assert _env(_agent(objs)[1])["EDGEFLEET_AGENT_TRUSTED_KEYS_FILE"] == KEYS_FILE


@pytest.mark.parametrize("case, message", [
    ("private", "agent.signing.trustedKeys contains a PRIVATE KEY"),
    ("rsa", "this PUBLIC KEY block is not an ed25519 key (make one with: openssl genpkey -algorithm ed25519"),
    ("garbage", 'agent.signing.trustedKeys line 2: expected a PEM PUBLIC KEY block (openssl pkey -pubout) or '
                'a base64 raw 32-byte ed25519 key, got "AAAA"'),
    ("unterminated", "a -----BEGIN PUBLIC KEY----- block has no -----END PUBLIC KEY----- line"),
    ("comments", "agent.signing.trustedKeys has no public key in it"),
    ("both", "agent.signing: set trustedKeys (inline) or existingConfigMap, not both"),
])
def test_bad_trusted_keys_fail_clearly(helm, keys, tmp_path, case, message):
    text = {
        "private": (keys / "a.pub").read_text() + (keys / "a.pem").read_text(),
        "rsa": (keys / "rsa.pub").read_text(),
        "garbage": "# a comment\nAAAA\n",
        "unterminated": "".join((keys / "a.pub").read_text().splitlines(keepends=True)[:2]),
        "comments": "# nothing yet\n\n",
        "both": (keys / "a.pub").read_text(),
    }[case]
    f = tmp_path / "keys.txt"
    f.write_text(text)
    extra = ["--set", "agent.signing.existingConfigMap=fleet-keys"] if case == "both" else []
    res = helm.template_raw(*AGENT, "--set-file", f"agent.signing.trustedKeys={f}", *extra)
    assert res.returncode != 0, res.stdout[:400]
    assert message in res.stderr, res.stderr


def _readme_signing_blocks() -> list[str]:
    text = (CHART / "README.md").read_text()
    section = text.split("### Artifact signing", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def test_readme_signing_commands_make_a_signature_the_public_key_verifies(helm, tmp_path):
    """Runs the README's key-pair and signing blocks verbatim, then checks the signature over
    the digest string with openssl and renders the public key through the chart."""
    make_keys, sign, install = _readme_signing_blocks()
    assert "--set-file agent.signing.trustedKeys=signing-pub.pem" in install
    (tmp_path / "model.onnx").write_bytes(b"not really onnx, only bytes to digest\n")
    sh = subprocess.run(["bash", "-euo", "pipefail", "-c", make_keys + sign], cwd=tmp_path,
                        capture_output=True, text=True)
    assert sh.returncode == 0, sh.stderr
    signature = base64.b64decode(sh.stdout.strip(), validate=True)
    assert len(signature) == 64
    sha = subprocess.run(["sha256sum", "model.onnx"], cwd=tmp_path, capture_output=True,
                         text=True).stdout.split()[0]
    (tmp_path / "digest").write_text(sha)
    (tmp_path / "sig").write_bytes(signature)
    res = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "signing-pub.pem", "-rawin",
                          "-in", "digest", "-sigfile", "sig"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and "Signature Verified Successfully" in res.stdout, res.stdout + res.stderr
    # A different digest does not verify with that signature.
    (tmp_path / "digest").write_text("0" * 64)
    res = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "signing-pub.pem", "-rawin",
                          "-in", "digest", "-sigfile", "sig"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode != 0
    objs = helm.objects(*AGENT, "--set-file", f"agent.signing.trustedKeys={tmp_path / 'signing-pub.pem'}")
    assert one(objs, "ConfigMap", "-agent-trusted-keys")["data"]["trusted-keys"] == \
        (tmp_path / "signing-pub.pem").read_text()
