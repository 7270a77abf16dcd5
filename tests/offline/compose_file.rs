//! The Docker Compose file cannot be run here (no Docker engine), so this checks what can be
//! checked: it parses, and it agrees with the local stack and the code on ports, services,
//! Kafka settings and config variable names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests and benches fail by panicking

use std::collections::BTreeSet;

fn compose() -> serde_yaml::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/docker-compose.yml"
    ))
    .expect("compose/docker-compose.yml exists");
    let mut value: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    // Resolve `<<: *anchor` merge keys, as docker compose does.
    value.apply_merge().expect("merge keys resolve");
    value
}

fn stack_script() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/compose/local/stack"))
        .expect("compose/local/stack exists")
}

#[test]
fn every_server_and_service_is_defined() {
    let compose = compose();
    let services: BTreeSet<String> = compose["services"]
        .as_mapping()
        .expect("services map")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for name in [
        "kafka",
        "registry",
        "clickhouse",
        "api",
        "identity",
        "resizer",
        "aggregator",
    ] {
        assert!(
            services.contains(name),
            "service {name} missing from compose: {services:?}"
        );
    }
}

#[test]
fn host_ports_match_the_local_stack_and_the_defaults() {
    let compose = compose();
    let published = |service: &str| -> Vec<String> {
        compose["services"][service]["ports"]
            .as_sequence()
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let has_host_port = |service: &str, port: u16| {
        published(service)
            .iter()
            .any(|p| p.contains(&format!("{port}:")))
    };
    assert!(has_host_port("kafka", 9092), "{:?}", published("kafka"));
    assert!(
        has_host_port("registry", 8081),
        "{:?}",
        published("registry")
    );
    assert!(
        has_host_port("clickhouse", 8123),
        "{:?}",
        published("clickhouse")
    );
    assert!(has_host_port("api", 8080), "{:?}", published("api"));
    assert!(
        has_host_port("identity", 8090),
        "{:?}",
        published("identity")
    );

    let script = stack_script();
    for default in [
        "IMGPIPE_KAFKA_PORT:-9092",
        "IMGPIPE_REGISTRY_PORT:-8081",
        "IMGPIPE_CLICKHOUSE_HTTP_PORT:-8123",
    ] {
        assert!(
            script.contains(default),
            "local stack default {default} changed"
        );
    }
}

#[test]
fn kafka_settings_match_the_local_stack() {
    let compose = compose();
    let env = &compose["services"]["kafka"]["environment"];
    let script = stack_script();
    // Same broker behaviour in both: no auto-created topics, large records, fast txn aborts.
    let pairs = [
        (
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE",
            "auto.create.topics.enable",
        ),
        ("KAFKA_MESSAGE_MAX_BYTES", "message.max.bytes"),
        (
            "KAFKA_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS",
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        ),
    ];
    for (compose_key, property) in pairs {
        let in_compose = match &env[compose_key] {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            other => panic!("{compose_key} missing or odd in compose: {other:?}"),
        };
        let line = script
            .lines()
            .find(|l| l.starts_with(&format!("{property}=")))
            .unwrap_or_else(|| panic!("{property} missing from the local stack"));
        assert_eq!(
            line.split_once('=').map(|(_, v)| v.trim()),
            Some(in_compose.as_str()),
            "{property}"
        );
    }
}

#[test]
fn each_service_gets_the_settings_it_cannot_start_without() {
    let compose = compose();
    let env = |service: &str, key: &str| {
        compose["services"][service]["environment"][key]
            .as_str()
            .map(str::to_owned)
    };
    let token =
        env("identity", "IMGPIPE_IDENTITY__ADMIN_TOKEN").expect("identity needs an admin token");
    assert!(
        token.starts_with("${") && token.contains(":?"),
        "required from the environment, not a default: {token}"
    );
    for service in ["api", "aggregator"] {
        assert!(
            env(service, "IMGPIPE_CLICKHOUSE__URL").is_some(),
            "{service} reads ClickHouse"
        );
    }
}

#[test]
fn service_environment_uses_real_config_keys() {
    // Every IMGPIPE_SECTION__FIELD in compose must be accepted by the config loader.
    let compose = compose();
    let mut seen = 0;
    for service in ["api", "identity", "resizer", "aggregator"] {
        let Some(env) = compose["services"][service]["environment"].as_mapping() else {
            panic!("{service} has no environment map");
        };
        let vars: Vec<(String, String)> = env
            .iter()
            .filter_map(|(k, v)| {
                let value = match v {
                    serde_yaml::Value::String(s) => s.clone(),
                    serde_yaml::Value::Number(n) => n.to_string(),
                    serde_yaml::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.as_str()?.to_owned(), value))
            })
            .filter(|(k, _)| k.starts_with("IMGPIPE_") && k.contains("__"))
            .collect();
        seen += vars.len();
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (key, value) in &vars {
                jail.set_env(key, value);
            }
            chassis::load_config::<imgpipe::Config>(None)
                .map(|_| ())
                .map_err(|e| format!("{service}: {e}").into())
        });
    }
    assert!(
        seen >= 4,
        "compose sets imgpipe config through the environment"
    );
}

#[test]
fn monitoring_scrapes_every_service_with_the_tested_rules() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services map");
    for name in ["prometheus", "grafana"] {
        assert!(
            services.contains_key(name),
            "service {name} missing from compose"
        );
    }
    let mounts = |service: &str| -> Vec<String> {
        compose["services"][service]["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        mounts("prometheus")
            .iter()
            .any(|m| m.starts_with("./prometheus:")),
        "prometheus reads compose/prometheus: {:?}",
        mounts("prometheus")
    );
    assert!(
        mounts("grafana")
            .iter()
            .any(|m| m.starts_with("./grafana/dashboards:")),
        "grafana loads compose/grafana/dashboards: {:?}",
        mounts("grafana")
    );
    // The scrape config names every imgpipe service at the ops port its containers listen on.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/prometheus/prometheus.yml"
    ))
    .expect("compose/prometheus/prometheus.yml exists");
    let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    let ops = compose["services"]["api"]["environment"]["IMGPIPE_OPS__LISTEN"]
        .as_str()
        .expect("ops listen address");
    let port = ops.rsplit(':').next().expect("a port");
    let targets: Vec<String> = config["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .expect("targets")
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    for service in ["api", "identity", "resizer", "aggregator"] {
        assert!(
            targets.contains(&format!("{service}:{port}")),
            "{service}:{port} not scraped: {targets:?}"
        );
    }
    assert_eq!(config["rule_files"][0].as_str(), Some("alerts.yml"));
}

/// The 3-node override (`-f compose/docker-compose.brokers3.yml`) describes the same cluster as
/// `compose/local/stack up --brokers 3`: three voters, RF 3 and min ISR 2 for internal topics,
/// host ports 9092/9094/9096, and every imgpipe service bootstrapping from all three nodes.
#[test]
fn three_broker_override_matches_the_local_cluster() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/docker-compose.brokers3.yml"
    ))
    .expect("compose/docker-compose.brokers3.yml exists");
    let mut value: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    value.apply_merge().expect("merge keys resolve");
    let base = compose();
    let number = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::String(s) => s.clone(),
        other => panic!("odd value {other:?}"),
    };
    for (node, (name, host_port)) in [("kafka", 9092), ("kafka-2", 9094), ("kafka-3", 9096)]
        .into_iter()
        .enumerate()
    {
        let env = &value["services"][name]["environment"];
        assert_eq!(number(&env["KAFKA_NODE_ID"]), (node + 1).to_string());
        assert_eq!(
            env["KAFKA_CONTROLLER_QUORUM_VOTERS"].as_str(),
            Some("1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093")
        );
        for key in [
            "KAFKA_DEFAULT_REPLICATION_FACTOR",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        ] {
            assert_eq!(number(&env[key]), "3", "{name} {key}");
        }
        for key in [
            "KAFKA_MIN_INSYNC_REPLICAS",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        ] {
            assert_eq!(number(&env[key]), "2", "{name} {key}");
        }
        // Every other broker setting is the single broker's.
        let single = base["services"]["kafka"]["environment"]
            .as_mapping()
            .unwrap();
        for (key, single_value) in single {
            let key = key.as_str().unwrap();
            if key.contains("REPLICATION_FACTOR")
                || key.contains("MIN_ISR")
                || key.contains("INSYNC")
                || [
                    "KAFKA_NODE_ID",
                    "KAFKA_CONTROLLER_QUORUM_VOTERS",
                    "KAFKA_ADVERTISED_LISTENERS",
                    "KAFKA_HEAP_OPTS",
                ]
                .contains(&key)
            {
                continue;
            }
            assert_eq!(number(&env[key]), number(single_value), "{name} {key}");
        }
        assert!(
            env["KAFKA_ADVERTISED_LISTENERS"]
                .as_str()
                .unwrap()
                .ends_with(&format!("HOST://127.0.0.1:{host_port}")),
            "{name}"
        );
    }
    for service in ["api", "identity", "resizer", "aggregator"] {
        assert!(
            base["services"][service].is_mapping(),
            "{service} is in the base file"
        );
        assert_eq!(
            value["services"][service]["environment"]["IMGPIPE_KAFKA__BROKERS"].as_str(),
            Some("kafka:9092,kafka-2:9092,kafka-3:9092"),
            "{service}"
        );
    }
}

#[test]
fn clickhouse_compresses_parts_with_zstd_like_the_local_stack() {
    let compose = compose();
    let mounts: Vec<String> = compose["services"]["clickhouse"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let mount = mounts
        .iter()
        .find(|m| m.starts_with("./clickhouse/compression.xml:"))
        .unwrap_or_else(|| {
            panic!("clickhouse mounts compose/clickhouse/compression.xml: {mounts:?}")
        });
    assert!(
        mount.contains(":/etc/clickhouse-server/config.d/"),
        "mounted where the server reads config overrides: {mount}"
    );
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/clickhouse/compression.xml"
    ))
    .expect("compose/clickhouse/compression.xml exists");
    // The same <case> in both: the storage figures in the README hold for either stack.
    let case = |text: &str| -> String {
        let start = text.find("<case>").expect("a <case> element");
        let end = text[start..].find("</case>").expect("</case>") + start;
        text[start..end].split_whitespace().collect()
    };
    assert_eq!(case(&file), case(&stack_script()));
    assert!(case(&file).contains("<method>zstd</method><level>3</level>"));
}
