//! Monitoring that is tested: the alert rules pass `promtool` (syntax and unit tests with
//! series), every alert links a runbook that exists, every metric a rule or a dashboard panel
//! names is one the services really export, every dashboard panel returns data after a short
//! load run, and a real fault (ClickHouse cut off from the aggregator) fires its alert in a
//! test-owned Prometheus within the alert's bound, then resolves.
//!
//! Prometheus and promtool are Debian's `prometheus` package (`compose/local/bootstrap`
//! installs it). Without them the tests say so and pass, except in CI (`CI=true`), where a
//! missing binary is a failure: the checks must not silently stop running there.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use imgpipe::host::Service;
use reqwest::StatusCode;
use schemas::events::{UsageRecorded, UsageSource};

use crate::support;

const ALERTS: &str = "compose/prometheus/alerts.yml";
const ALERT_TESTS: &str = "compose/prometheus/alerts_test.yml";
const DOCKER_CONFIG: &str = "compose/prometheus/prometheus.yml";
const DASHBOARD: &str = "compose/grafana/dashboards/imgpipe.json";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `binary` runs; if not, panics in CI and returns false elsewhere.
fn available(binary: &str) -> bool {
    let found = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{binary} is missing in CI: install Debian's prometheus package (compose/local/bootstrap)"
        );
        eprintln!("skipped: {binary} is not installed (apt-get install prometheus)");
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The rule file, its runbooks and the PromQL in it.

#[derive(Debug, serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, serde::Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Debug, serde::Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(repo().join(ALERTS)).unwrap();
    let file: RuleFile = serde_yaml::from_str(&text).unwrap();
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// Every `expr` of the dashboard's panels (rows included), with the panel's title.
fn panel_queries() -> Vec<(String, String)> {
    fn walk(panel: &serde_json::Value, out: &mut Vec<(String, String)>) {
        let title = panel["title"].as_str().unwrap_or("").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            out.push((title.clone(), expr.to_owned()));
        }
        for inner in panel["panels"].as_array().into_iter().flatten() {
            walk(inner, out);
        }
    }
    let text = std::fs::read_to_string(repo().join(DASHBOARD)).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        walk(panel, &mut out);
    }
    out
}

/// The metric names a PromQL expression reads. A small lexer, enough for the rule file and the
/// dashboard: strings, label matchers `{…}`, ranges `[…]` and the label lists of `by`,
/// `without`, `on`, `ignoring`, `group_left`/`group_right` are dropped; an identifier followed by
/// `(` is a function; keywords and numbers are not names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        // Aggregation operators may take their `by (…)` before the parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut drop_next_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if drop_next_list => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                drop_next_list = false;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let lower = word.to_ascii_lowercase();
                if KEYWORDS.contains(&lower.as_str()) {
                    drop_next_list = matches!(
                        lower.as_str(),
                        "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    );
                } else if chars.get(j) != Some(&'(') {
                    names.insert(word);
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number, or a duration such as `5m` after `offset`.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_lexer_finds_metric_names_and_nothing_else() {
    let names = metric_names(
        r#"sum by (job, le) (rate(a_total{x="y(z)",le="0.5"}[5m])) / on (job) group_left (c) b
           and absent(up{job="imgpipe"}) > 1e3 or histogram_quantile(0.99, c_bucket) offset 5m
           or rec:ratio_rate5m > bool 0.5"#,
    );
    let expected: BTreeSet<String> = ["a_total", "b", "up", "c_bucket", "rec:ratio_rate5m"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
}

#[test]
fn every_alert_has_a_runbook_and_a_bound() {
    let rules = rules();
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.alert.is_some()).collect();
    assert!(alerts.len() >= 15, "{} alerts", alerts.len());
    let mut names = BTreeSet::new();
    for alert in alerts {
        let name = alert.alert.as_deref().unwrap();
        assert!(names.insert(name), "{name} defined twice");
        let url = alert
            .annotations
            .get("runbook_url")
            .unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let path = repo().join(url);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{name}: runbook {url} cannot be read: {e}"));
        for section in ["## Meaning", "## Confirm", "## Fix", "## Verify"] {
            assert!(text.contains(section), "{url} lacks `{section}`");
        }
        assert!(
            text.contains(name),
            "{url} does not name the alert {name} it serves"
        );
        for annotation in ["summary", "description", "bound"] {
            assert!(
                alert.annotations.contains_key(annotation),
                "{name} has no {annotation}"
            );
        }
    }
    // Recording rules the alerts read are defined here, once each.
    let records: BTreeSet<&str> = rules.iter().filter_map(|r| r.record.as_deref()).collect();
    for rule in &rules {
        for name in metric_names(&rule.expr) {
            if name.contains(':') {
                assert!(records.contains(name.as_str()), "{name} is not recorded");
            }
        }
    }
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    if !available("promtool") {
        return;
    }
    let started = Instant::now();
    // `check config` also checks the rule files it names (alerts.yml).
    for args in [
        vec!["check", "rules", ALERTS],
        vec!["check", "config", DOCKER_CONFIG],
        vec!["test", "rules", ALERT_TESTS],
    ] {
        let output = Command::new("promtool")
            .args(&args)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    eprintln!("promtool check + test rules: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// A Prometheus of the test's own.

/// A Prometheus process the test started, on its own port and data directory, killed on drop
/// (by its own PID, panics included).
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `targets` every second and evaluates the real rule file every second.
    async fn start(targets: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: imgpipe\n    static_configs:\n      - targets: [{targets}]\n",
            rules = repo().join(ALERTS),
            targets = targets.join(", "),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        support::eventually(Duration::from_secs(30), "Prometheus to be ready", || {
            let http = prometheus.http.clone();
            let ready = ready.clone();
            async move {
                let status = http.get(ready).send().await.ok()?.status();
                status.is_success().then_some(())
            }
        })
        .await;
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector (or an error text).
    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let body: serde_json::Value = self
            .http
            .get(
                reqwest::Url::parse_with_params(
                    &format!("{}/api/v1/query", self.url),
                    &[("query", expr)],
                )
                .map_err(|e| e.to_string())?,
            )
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The state (`pending`, `firing`) of alert `name`, if it is active.
    async fn alert_state(&self, name: &str) -> Option<String> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .and_then(|a| a["state"].as_str().map(str::to_owned))
    }

    /// Whether every scrape target is up.
    async fn targets_up(&self) -> bool {
        self.query("up{job=\"imgpipe\"} == 0")
            .await
            .is_ok_and(|down| down.is_empty())
            && self
                .query("up{job=\"imgpipe\"}")
                .await
                .is_ok_and(|up| !up.is_empty())
    }
}

/// Metric names a `/metrics` page exports, histogram series names included.
fn exported(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

// ---------------------------------------------------------------------------------------------
// Against running services.

fn usage_record(tenant: &str, i: usize) -> UsageRecorded {
    UsageRecorded {
        request_id: format!("{tenant}-{i}"),
        tenant_id: tenant.into(),
        key_id: "k".into(),
        event_time_ms: i64::try_from(
            SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap(),
        outcome: "ok".into(),
        status: 200,
        bytes_in: 1000,
        bytes_out: 10,
        pixels_in: 100,
        pixels_out: 10,
        cpu_time_us: 7,
        input_format: Some("jpeg".into()),
        output_format: Some("jpeg".into()),
        latency_us: 5,
        source: UsageSource::Resizer,
        source_host: None,
    }
}

/// `count` resizes from `concurrency` clients; returns how many were answered 200.
async fn load(api: SocketAddr, key: &str, count: usize, concurrency: usize) -> usize {
    let http = reqwest::Client::new();
    let image = support::images::jpeg(96, 64);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients = (0..concurrency).map(|_| {
        let (http, image, next, key) = (http.clone(), image.clone(), next.clone(), key.to_owned());
        async move {
            let mut ok = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < count {
                let response = http
                    .post(format!("http://{api}/v1/resize?width=32&format=png"))
                    .bearer_auth(&key)
                    .body(image.clone())
                    .send()
                    .await
                    .unwrap();
                if response.status() == StatusCode::OK {
                    ok += 1;
                }
            }
            ok
        }
    });
    futures::future::join_all(clients).await.into_iter().sum()
}

#[tokio::test]
async fn dashboards_and_alerts_work_against_running_services() {
    if !available("prometheus") {
        return;
    }
    let test_started = Instant::now();
    let mut config = support::provisioned("monitoring").await;
    // ClickHouse behind a proxy this test owns: the fault is cutting the proxy, never touching
    // the shared server.
    let clickhouse = support::outage::Outage::proxy(SocketAddr::from(([127, 0, 0, 1], 8123))).await;
    config.clickhouse.url = format!("http://{}", clickhouse.address);
    config.aggregator.batch_max_age = Duration::from_millis(200);
    config.aggregator.retry_backoff_max = Duration::from_secs(1);
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let identity = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    config.api.listen = api;
    config.identity.listen = identity;
    config.identity.admin_token = support::ADMIN_TOKEN.into();
    config.resizer.workers = 2;
    let hosted = support::host(
        config.clone(),
        &[
            Service::Identity,
            Service::Resizer,
            Service::Api,
            Service::Aggregator,
        ],
    )
    .await;
    let key = support::create_tenant_key(identity, "monitoring", 1000, 1000).await;
    support::wait_for_key(api, &key.api_key).await;

    let prometheus = Prometheus::start(&[hosted.ops]).await;
    support::eventually(
        Duration::from_secs(15),
        "the ops endpoint scraped",
        || async { prometheus.targets_up().await.then_some(()) },
    )
    .await;

    // A short load run, so rates, histograms and per-outcome series have data.
    let load_started = Instant::now();
    let requests = 150;
    let ok = load(api, &key.api_key, requests, 4).await;
    assert_eq!(ok, requests, "every resize of the load run succeeds");
    // One client error, so per-outcome panels see more than one outcome.
    let status = reqwest::Client::new()
        .post(format!("http://{api}/v1/resize?width=32"))
        .bearer_auth(&key.api_key)
        .body(b"not an image".to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let load_took = load_started.elapsed();

    // Every metric a rule or a panel reads is one the services export, read from their own
    // page. Some appear only after the work they measure (the aggregator's lag comes from
    // librdkafka statistics every 5 s, once an offset is stored): poll for a while.
    let rules = rules();
    let panels = panel_queries();
    assert!(panels.len() >= 12, "{} panel queries", panels.len());
    let used: Vec<(String, String)> = rules
        .iter()
        .map(|r| {
            (
                r.alert.clone().or(r.record.clone()).unwrap(),
                r.expr.clone(),
            )
        })
        .chain(panels.iter().cloned())
        .collect();
    let unknown_names = || async {
        let page = reqwest::get(format!("http://{}/metrics", hosted.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut known = exported(&page);
        known.insert("up".into()); // Prometheus' own per-target series
        known.extend(rules.iter().filter_map(|r| r.record.clone()));
        let mut unknown = Vec::new();
        for (owner, expr) in &used {
            for name in metric_names(expr) {
                if !known.contains(&name) {
                    unknown.push(format!("{owner}: {name}"));
                }
            }
        }
        unknown
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let unknown = unknown_names().await;
        if unknown.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics used but not exported: {unknown:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every panel query returns data from the test's Prometheus. Polled, not read once: rates
    // need two scrapes on each side of the load, and a consumer's lag series exists only after
    // librdkafka's next statistics tick (every 5 s) has been scraped, which a name already
    // exported by another consumer (the identity view) does not prove.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for (title, expr) in &panels {
            match prometheus.query(expr).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => empty.push(format!("{title}: no data for {expr}")),
                Err(error) => empty.push(format!("{title}: {expr} failed: {error}")),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "panels without data: {empty:#?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Healthy: the ClickHouse alert is silent.
    assert_eq!(prometheus.alert_state("ImgpipeClickHouseDown").await, None);

    // The fault: ClickHouse goes away for the aggregator, and usage keeps arriving.
    clickhouse.cut();
    let cut_at = Instant::now();
    // Prometheus times `for` with its wall clock; this VM's wall clock can run a few percent
    // apart from the monotonic one (a CI run saw `firing` 58.5 monotonic seconds after the cut),
    // so the `for` bound is checked on the wall clock too.
    let cut_wall = SystemTime::now();
    let producer = support::UsageProducer::new(&config);
    let events: Vec<UsageRecorded> = (0..20).map(|i| usage_record("monitoring", i)).collect();
    producer.send(&events).await;
    // The rule's `for: 1m`, plus the time the aggregator needs to see the failure (its next
    // INSERT after at most `batch_max_age`, failing at once on a cut connection) and a few
    // 1 s scrape and evaluation rounds.
    let fire_bound = Duration::from_secs(60 + 20);
    let mut pending_after = None;
    let fired_after = loop {
        let state = prometheus.alert_state("ImgpipeClickHouseDown").await;
        if state.as_deref() == Some("pending") && pending_after.is_none() {
            pending_after = Some(cut_at.elapsed());
        }
        if state.as_deref() == Some("firing") {
            break SystemTime::now()
                .duration_since(cut_wall)
                .unwrap_or_default();
        }
        assert!(
            cut_at.elapsed() < fire_bound,
            "ImgpipeClickHouseDown not firing {fire_bound:?} after the cut (state {state:?}); \
             Prometheus log:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let pending_after = pending_after.expect("the alert was pending before it fired");
    assert!(
        fired_after >= Duration::from_secs(60),
        "fired after {fired_after:?}, before its `for: 1m`"
    );

    // The fault ends: the aggregator reconnects by itself and the alert resolves.
    clickhouse.restore();
    let restored_at = Instant::now();
    let resolve_bound = Duration::from_secs(20);
    let resolved_after = loop {
        if prometheus
            .alert_state("ImgpipeClickHouseDown")
            .await
            .is_none()
        {
            break restored_at.elapsed();
        }
        assert!(
            restored_at.elapsed() < resolve_bound,
            "ImgpipeClickHouseDown still active {resolve_bound:?} after ClickHouse came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "load run {load_took:?} ({requests} resizes); ClickHouseDown pending after \
         {pending_after:?}, firing after {fired_after:?}, resolved {resolved_after:?} after \
         restore; whole test {:?}",
        test_started.elapsed()
    );
    drop(prometheus);
    hosted.stop().await;
}
