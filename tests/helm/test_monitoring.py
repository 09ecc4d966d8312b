"""Grafana dashboard, Prometheus rules (promtool) and their chart wrappers."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from conftest import CHART, EVERYTHING, HERE, one, run

DASHBOARD = CHART / "dashboards" / "edgefleet.json"
RULES = CHART / "rules" / "edgefleet-rules.yaml"


def _promtool() -> str:
    p = shutil.which("promtool")
    assert p, "promtool not found: apt-get install -y prometheus (tests/helm/run-tests.sh does it)"
    return p


def _panels(d):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def test_dashboard_parses_and_every_target_has_an_expr():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ds_vars = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert ds_vars and ds_vars[0]["query"] == "prometheus"
    targets = 0
    ids = set()
    for p in _panels(d):
        assert p["id"] not in ids
        ids.add(p["id"])
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), (p["title"], t)
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            targets += 1
    assert targets >= 15


def test_dashboard_covers_every_required_metric():
    exprs = " ".join(t["expr"] for p in _panels(json.loads(DASHBOARD.read_text())) for t in p.get("targets", []))
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, variant, device_class)" in exprs
        assert f"histogram_quantile({q}, sum by (le, role)" in exprs
    for metric in ("edgefleet_inference_latency_seconds_bucket", "edgefleet_inference_errors_total",
                   "edgefleet_inference_requests_total", "edgefleet_devices", "edgefleet_deployment_devices",
                   "edgefleet_rollout_step", "edgefleet_canary_verdicts_total", "edgefleet_reconcile_errors_total",
                   "edgefleet_mqtt_messages_received_total", "edgefleet_mqtt_messages_rejected_total",
                   "edgefleet_mqtt_messages_published_total"):
        assert re.search(rf"\b{metric}\b", exprs), metric
    assert "matched|assigned|updated|ready|failed|offline|no_fit" in exprs


def test_dashboard_language_models_row_covers_every_llm_metric():
    """The e2e tests find the LLM panels by their row (tests/src/prometheus.rs): every
    edgefleet_llm_ query sits in the "Language models" row, and the row covers every family."""
    d = json.loads(DASHBOARD.read_text())
    row, by_row = "", {}
    for p in d["panels"]:
        if p["type"] == "row":
            row = p["title"]
            continue
        by_row.setdefault(row, []).extend(t["expr"] for t in p.get("targets", []))
    llm = by_row.get("Language models", [])
    assert llm and all("edgefleet_llm_" in e for e in llm), llm
    others = [e for r, exprs in by_row.items() if r != "Language models" for e in exprs]
    assert not [e for e in others if "edgefleet_llm_" in e]
    exprs = " ".join(llm)
    for metric in ("edgefleet_llm_time_to_first_token_seconds_bucket", "edgefleet_llm_inter_token_latency_seconds_bucket",
                   "edgefleet_llm_queue_wait_seconds_bucket", "edgefleet_llm_prompt_tokens_per_second_bucket",
                   "edgefleet_llm_decode_tokens_per_second_bucket", "edgefleet_llm_completion_tokens_total",
                   "edgefleet_llm_context_overflows_total", "edgefleet_llm_rejected_busy_total"):
        assert re.search(rf"\b{metric}\b", exprs), metric
    for q in ("0.5", "0.95"):
        assert f"histogram_quantile({q}, sum by (le, variant, device_class, role) (rate(edgefleet_llm_time_to_first_token_seconds_bucket" in exprs


def test_dashboard_configmap_carries_the_json(helm):
    cm = one(helm.objects(values=EVERYTHING), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["edgefleet.json"]) == json.loads(DASHBOARD.read_text())


def test_rules_file_passes_promtool_check():
    res = run([_promtool(), "check", "rules", str(RULES)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_rules_unit_tests_pass():
    res = run([_promtool(), "test", "rules", str(HERE / "rules-tests.yaml")])
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_have_the_required_alerts():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert set(alerts) == {"EdgeFleetLatencySLOBreach", "EdgeFleetInferenceErrorRateHigh",
                           "EdgeFleetRolloutStuck", "EdgeFleetControllerMQTTDisconnected",
                           "EdgeFleetControllerMQTTReconnecting"}
    assert alerts["EdgeFleetLatencySLOBreach"]["for"] == "10m"
    assert alerts["EdgeFleetControllerMQTTDisconnected"]["for"] == "5m"
    assert "edgefleet_mqtt_connected" in alerts["EdgeFleetControllerMQTTDisconnected"]["expr"]
    assert "edgefleet_rollout_progressing" in alerts["EdgeFleetRolloutStuck"]["expr"]
    assert "edgefleet_mqtt_connections_total" in alerts["EdgeFleetControllerMQTTReconnecting"]["expr"]


def test_prometheusrule_embeds_the_rules_file_untemplated(helm, tmp_path):
    pr = one(helm.objects(values=EVERYTHING), "PrometheusRule")
    assert pr["spec"] == yaml.safe_load(RULES.read_text())
    assert "{{ $labels.deployment }}" in json.dumps(pr)
    # What the chart renders is itself a valid rules file.
    f = tmp_path / "rendered-rules.yaml"
    f.write_text(yaml.safe_dump(pr["spec"]))
    res = run([_promtool(), "check", "rules", str(f)])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("key, kind", [("serviceMonitor", "ServiceMonitor"), ("prometheusRule", "PrometheusRule"),
                                       ("dashboard", "ConfigMap")])
def test_monitoring_objects_are_behind_values(helm, key, kind):
    names = lambda objs: {(o["kind"], o["metadata"]["name"]) for o in objs}
    off = names(helm.objects())
    on = names(helm.objects("--set", f"metrics.{key}.enabled=true"))
    added = on - off
    assert len(added) == 1 and next(iter(added))[0] == kind
