"""Alert rules (promtool), the Grafana dashboard, and the metrics both rely on.

`promtool check rules` and `promtool test rules` run on deploy/prometheus/ (Debian's
`prometheus` package; scripts/test.sh installs it). The dashboard must be valid JSON whose
PromQL parses, and every callgate metric and label that the dashboard and the rules query must
be exported by a running callgate (scraped from /metrics).
"""

import json
import re
import subprocess

import yaml

from conftest import API_CLIENTS_FILE, DEMO_KEY, ROOT, CallgateProcess, RedisServer, wait_for

RULES = ROOT / "deploy" / "prometheus" / "callgate-alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "callgate-alerts.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "callgate-dashboard.json"


def promtool(*args):
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout, result.stdout


def test_promtool_test_rules():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert has a unit test.
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in test.get("alert_rule_test", [])}
    assert alerts <= tested, alerts - tested


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs():
    """Every PromQL expression of the dashboard: panel targets and template variable queries."""
    d = dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(v["definition"])
    return exprs


def rule_exprs():
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_dashboard_is_valid_and_its_promql_parses(tmp_path):
    d = dashboard()
    assert d["title"] and d["uid"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    # What the dashboard covers (the list).
    text = " ".join(dashboard_exprs())
    for metric in ("callgate_checks_total", "callgate_check_answer_duration_seconds_bucket",
                   "callgate_webhooks_total", "callgate_store_errors_total",
                   "callgate_open_streams", "callgate_stream_catch_ups_total",
                   "callgate_grants_expired_total", "callgate_ready"):
        assert metric in text, f"the dashboard does not show {metric}"
    # promtool parses each panel query (Grafana's variables replaced by values) as a rule.
    rules = []
    for i, expr in enumerate(e for e in dashboard_exprs() if not e.startswith("label_values")):
        expr = (expr.replace("$__rate_interval", "5m").replace("$job", ".*")
                .replace("$instance", ".*"))
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def parse_exposition(text):
    """{metric name: [labels dict]} of a Prometheus text exposition."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? \S+$", line)
        assert m, f"unparsable exposition line {line!r}"
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        series.setdefault(m.group(1), []).append(labels)
    return series


def queried(exprs):
    """(metric names, [(metric, label, value)] equality matchers, [(expr, by-labels)])."""
    names, matchers, groupings = set(), [], []
    for expr in exprs:
        for name, body in re.findall(r"\b(callgate_[a-z0-9_]+)(?:\{([^}]*)\})?", expr):
            names.add(name)
            for label, value in re.findall(r'(\w+)="([^"$]*)"', body or ""):
                matchers.append((name, label, value))
        for by in re.findall(r"\bby \(([^)]*)\)", expr):
            groupings.append((expr, {b.strip() for b in by.split(",")}))
    return names, matchers, groupings


def test_every_metric_and_label_the_dashboard_and_rules_query_is_exported(callgate):
    series = parse_exposition(callgate.metrics())
    exprs = dashboard_exprs() + rule_exprs()
    names, matchers, groupings = queried(exprs)
    assert len(names) >= 10, names
    missing = sorted(n for n in names if n not in series)
    assert not missing, f"queried but not exported by callgate: {missing}"
    for name, label, value in matchers:
        assert any(s.get(label) == value for s in series[name]), (name, label, value)
    # Labels a query groups by exist on a metric it reads (job and instance come from scraping).
    for expr, labels in groupings:
        own = set()
        for name in re.findall(r"\b(callgate_[a-z0-9_]+)", expr):
            for s in series.get(name, []):
                own |= set(s)
        assert labels - own - {"job", "instance"} == set(), (expr, labels - own)


def test_readiness_gauge_follows_the_store():
    redis = RedisServer(["--maxmemory-policy", "noeviction", "--save", "", "--appendonly", "no"])
    app = None
    try:
        app = CallgateProcess(
            ["serve", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
            {"CALLGATE_REDIS_URL": f"redis://127.0.0.1:{redis.port}",
             "CALLGATE_REDIS_TIMEOUT_MS": "200", "CALLGATE_API_CLIENTS_FILE": API_CLIENTS_FILE},
        )

        wait_for(lambda: "callgate_ready 1" in app.metrics().splitlines(),
                 what="callgate_ready 1")
        assert app.get("/readyz")[0] == 200
        redis.stop()
        # The alerts' signals: readiness 0, checks failing closed are counted.
        wait_for(lambda: "callgate_ready 0" in app.metrics().splitlines(),
                 what="callgate_ready 0 after Redis stopped")
        assert app.get("/readyz")[0] == 503
        check = subprocess.run(
            [app.proc.args[0], "check", "+919000000000", "+919876543210", "--addr", app.grpc,
             "--token", DEMO_KEY],
            capture_output=True, text=True, timeout=30)
        assert check.returncode == 1, check
        assert check.stderr.startswith("callgate: ") and check.stderr.count("\n") == 1, \
            check.stderr
        unavailable = [line for line in app.metrics().splitlines()
                       if line.startswith('callgate_checks_total{answer="unavailable"}')]
        assert unavailable == ['callgate_checks_total{answer="unavailable"} 1'], unavailable
    finally:
        if app:
            app.kill()
        redis.stop()
