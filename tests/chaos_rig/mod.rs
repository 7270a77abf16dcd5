//! The chaos driver: a stack of its own (a 3-node KRaft cluster, the registry and ClickHouse on
//! free ports, under a temporary state dir, so faults never touch the shared stack), every
//! imgpipe service as its own child process, steady load from several tenants, and faults
//! injected one at a time. For each fault it records what clients saw and how long the system
//! took to be whole again; at the end it compares what clients were given with what was billed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod netfault;
pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The api's deadline in this run; a client waits this plus [`HANG_MARGIN`] before calling the
/// request hung.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Slack for the answer to travel after the deadline fired.
pub const HANG_MARGIN: Duration = Duration::from_secs(3);
/// How close to an api kill a 200 must have arrived to count as handed over at the kill (see
/// [`Rig::check_billing`]).
pub const HANDOFF_WINDOW: Duration = Duration::from_millis(500);
/// How long the system may take to be whole again after a fault ends.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(120);
/// Steady load before each fault.
const STEADY: Duration = Duration::from_secs(5);

const STACK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/local/stack");
const ADMIN_TOKEN: &str = "chaos-admin-token-0123456789";

/// Prints a progress line (visible with `--nocapture`, and in the report's log).
pub fn progress(t0: Instant, message: &str) {
    eprintln!("[chaos {:>6.1}s] {message}", t0.elapsed().as_secs_f64());
}

/// The test's own stack instance, purged on drop.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub kafka_base: u16,
    pub registry_port: u16,
    pub clickhouse_port: u16,
    pub brokers: usize,
    pub start_time: Duration,
    /// A relay in front of each broker's client port, which the broker advertises: the
    /// network faults act on these.
    pub relays: Vec<netfault::Relay>,
}

/// A base port with `count` free ports after it.
fn free_port_run(count: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (rand_u16() % 30_000);
        if (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {count} free ports");
}

fn rand_u16() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

impl Stack {
    /// Starts `brokers` Kafka nodes behind their relays, the registry and ClickHouse; waits
    /// until all answer.
    pub async fn up(brokers: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("imgpipe-chaos-")
            .tempdir()
            .unwrap();
        // Kafka nodes take 2 ports each, then registry (2) and ClickHouse (2), then the relays
        // (at each node's client port plus the offset, so every second port).
        let offset = 2 * brokers as u16 + 4;
        let base = free_port_run(offset + 2 * brokers as u16);
        let after_kafka = base + 2 * brokers as u16;
        let mut relays = Vec::new();
        for i in 0..brokers as u16 {
            let port = base + 2 * i;
            relays.push(
                netfault::Relay::start(
                    SocketAddr::from(([127, 0, 0, 1], port + offset)),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                )
                .await,
            );
        }
        let stack = Self {
            dir,
            kafka_base: base,
            registry_port: after_kafka,
            clickhouse_port: after_kafka + 2,
            brokers,
            start_time: Duration::ZERO,
            relays,
        };
        let started = Instant::now();
        let mut output = stack.command(&["up", "--brokers", &brokers.to_string()]);
        output
            .env("IMGPIPE_KAFKA_PORT", base.to_string())
            .env("IMGPIPE_KAFKA_ADVERTISED_PORT_OFFSET", offset.to_string())
            .env("IMGPIPE_KAFKA_CONTROLLER_PORT", (base + 1).to_string())
            .env("IMGPIPE_REGISTRY_PORT", after_kafka.to_string())
            .env("IMGPIPE_REGISTRY_MGMT_PORT", (after_kafka + 1).to_string())
            .env(
                "IMGPIPE_CLICKHOUSE_HTTP_PORT",
                (after_kafka + 2).to_string(),
            )
            .env("IMGPIPE_CLICKHOUSE_TCP_PORT", (after_kafka + 3).to_string())
            .env("IMGPIPE_CLICKHOUSE_MEMORY", "1g");
        let output = block(|| output.output().unwrap());
        assert!(
            output.status.success(),
            "stack up failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut stack = stack;
        stack.start_time = started.elapsed();
        stack
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(STACK_SCRIPT);
        command
            .args(args)
            .env("IMGPIPE_STACK_DIR", self.dir.path())
            .env("IMGPIPE_MONITORING", "0")
            .stdin(Stdio::null());
        command
    }

    /// Runs a stack subcommand, panicking with its output if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "stack {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Name of Kafka node `i` (1-based) for the stack script.
    pub fn node(i: usize) -> String {
        if i == 1 {
            "kafka".into()
        } else {
            format!("kafka-{i}")
        }
    }

    /// Node id of the active KRaft controller (the quorum leader).
    pub fn controller(&self) -> usize {
        let out = self.run(&["kafka-metadata-quorum", "describe", "--status"]);
        out.lines()
            .find_map(|l| l.strip_prefix("LeaderId:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a quorum leader")
    }

    /// Starts several servers at once (a quorum needs its nodes together) and waits for all.
    pub fn start_all(&self, servers: &[String]) {
        let children: Vec<_> = servers
            .iter()
            .map(|s| {
                self.command(&["start", s])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "start failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// The node (1-based) leading the most partitions of `topic`.
    pub fn busiest_leader(&self, topic: &str) -> usize {
        let out = self.run(&["kafka-topics", "--describe", "--topic", topic]);
        let mut led: BTreeMap<usize, usize> = BTreeMap::new();
        for leader in out.lines().filter_map(|l| {
            l.split("Leader:")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|id| id.parse().ok())
        }) {
            *led.entry(leader).or_default() += 1;
        }
        led.into_iter()
            .max_by_key(|&(_, count)| count)
            .map(|(node, _)| node)
            .expect("the topic has leaders")
    }

    /// The node (1-based) coordinating consumer group `group`.
    pub fn group_coordinator(&self, group: &str) -> usize {
        let out = self.run(&[
            "kafka-consumer-groups",
            "--describe",
            "--group",
            group,
            "--state",
        ]);
        out.lines()
            .filter(|l| l.starts_with(group))
            .find_map(|l| {
                let id = l.split('(').nth(1)?.split(')').next()?;
                id.trim().parse().ok()
            })
            .unwrap_or_else(|| panic!("no coordinator of {group} in: {out}"))
    }

    pub fn bootstrap(&self) -> String {
        (0..self.brokers)
            .map(|i| format!("127.0.0.1:{}", self.kafka_base + 2 * i as u16))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn registry_url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/ccompat/v7", self.registry_port)
    }

    pub fn clickhouse_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.clickhouse_port)
    }

    /// Resident memory of each server now, MiB (from `stack status`).
    pub fn rss(&self) -> Vec<(String, u64)> {
        self.run(&["status"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.first()?.to_string(), f.get(3)?.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self
            .command(&["down", "--purge"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One imgpipe service in its own process.
pub struct Service {
    pub name: &'static str,
    pub ops: SocketAddr,
    env: Vec<(String, String)>,
    log: PathBuf,
    pub child: Option<Child>,
    pub peak_rss_kib: Arc<Mutex<u64>>,
}

impl Service {
    pub fn new(name: &'static str, env: Vec<(String, String)>, logs: &Path) -> Self {
        let ops = SocketAddr::from(([127, 0, 0, 1], free_port_run(1)));
        Self {
            name,
            ops,
            env,
            log: logs.join(format!("{name}.log")),
            child: None,
            peak_rss_kib: Arc::new(Mutex::new(0)),
        }
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
            .arg(self.name)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("IMGPIPE_OPS__LISTEN", self.ops.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the imgpipe binary starts");
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The end of the service's log, for failure messages (the stack dir is purged on drop).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs and its `/readyz` says ready.
    pub async fn ready(&mut self, http: &reqwest::Client) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        http.get(format!("http://{}/readyz", self.ops))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// What `/readyz` answers now (status and body), or why it could not be asked: the rig prints
    /// it for every service that is not ready when a recovery times out.
    pub async fn readiness(&mut self, http: &reqwest::Client) -> String {
        if let Some(status) = self.exited() {
            return format!("exited ({status})");
        }
        match http
            .get(format!("http://{}/readyz", self.ops))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => format!("no answer: {e}"),
        }
    }

    /// Whether the process exited by itself (a crash, or giving up on a dependency).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What one client request got.
#[derive(Debug, Clone)]
pub struct Sample {
    pub start: Duration,
    pub end: Duration,
    pub tenant: usize,
    /// HTTP status, or 0 when no answer came (connection refused or reset).
    pub status: u16,
    /// The problem's `code`, or the transport error's kind.
    pub code: String,
    pub request_id: Option<String>,
}

impl Sample {
    /// "503 kafka_unavailable", "200", "refused" …
    pub fn label(&self) -> String {
        match self.status {
            0 => self.code.clone(),
            200 => "200".into(),
            s => format!("{s} {}", self.code),
        }
    }
}

/// The faults the suite knows.
#[derive(Debug, Clone)]
pub enum Fault {
    /// kill -9 of a service, restarted after `pause`.
    KillService(&'static str, Duration),
    /// kill -9 of Kafka node `n`, brought back after `pause`.
    KillBroker(usize, Duration),
    /// kill -9 of the active controller, brought back after `pause`.
    KillController(Duration),
    /// kill -9 of two brokers (below min ISR), both brought back after `pause`.
    KillTwoBrokers(Duration),
    /// A server of the stack (`clickhouse`, `registry`) stopped for the duration.
    StopServer(&'static str, Duration),
    /// Every Kafka node stopped for the duration.
    StopKafka(Duration),
    /// Kafka node `n`'s traffic (clients' and followers') delayed by `delay` each way.
    NetDelay(usize, Duration, Duration),
    /// The broker leading the most `image.requests` partitions black-holed for the duration:
    /// nothing reaches it or comes back, but it stays a live member of the KRaft quorum (a
    /// partial partition, which Kafka does not fail over by itself).
    NetPartition(Duration),
    /// The coordinator of consumer group `.0` black-holed the same way: its members' sessions
    /// time out while they cannot reach it (the api's reply group is a static member).
    NetPartitionCoordinator(&'static str, Duration),
}

impl Fault {
    pub fn describe(&self) -> String {
        match self {
            Self::KillService(s, p) => format!("kill -9 {s} (back after {}s)", p.as_secs()),
            Self::KillBroker(n, p) => format!("kill -9 broker {n} (back after {}s)", p.as_secs()),
            Self::KillController(p) => {
                format!("kill -9 active controller (back after {}s)", p.as_secs())
            }
            Self::KillTwoBrokers(p) => format!(
                "kill -9 two brokers, below min ISR (back after {}s)",
                p.as_secs()
            ),
            Self::StopServer(s, d) => format!("{s} stopped {}s", d.as_secs()),
            Self::StopKafka(d) => format!("all Kafka nodes killed, back after {}s", d.as_secs()),
            Self::NetDelay(n, delay, d) => format!(
                "broker {n}'s network delayed {} ms each way for {}s",
                delay.as_millis(),
                d.as_secs()
            ),
            Self::NetPartition(d) => format!(
                "busiest leader cut off the network (not the quorum) for {}s",
                d.as_secs()
            ),
            Self::NetPartitionCoordinator(group, d) => format!(
                "{group}'s group coordinator cut off the network (not the quorum) for {}s",
                d.as_secs()
            ),
        }
    }
}

/// One fault's outcome.
#[derive(Debug, Clone)]
pub struct FaultResult {
    pub fault: String,
    pub start: Duration,
    /// When the fault was lifted (servers or service started again).
    pub end: Duration,
    /// When every service was ready again and a request was answered 200.
    pub recovered: Option<Duration>,
    /// Non-200 answers of requests started between the fault and the recovery, by label.
    pub errors: BTreeMap<String, usize>,
    pub ok: usize,
    /// Requests that got no answer within deadline + margin.
    pub hung: usize,
    /// Request ids of this phase answered 200 (for the billing check).
    pub ok_ids: HashSet<String>,
    /// Services that exited by themselves and were started again by the rig (as a supervisor).
    pub restarted: Vec<&'static str>,
    /// The services that were the last to be ready again (none: all were ready at once).
    pub last_ready: Vec<&'static str>,
    /// Filled in by the billing check.
    pub billing_exact: Option<bool>,
    pub billing_detail: String,
}

/// The whole system under test.
pub struct Rig {
    pub t0: Instant,
    pub stack: Stack,
    pub services: Vec<Service>,
    pub api: SocketAddr,
    pub identity: SocketAddr,
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub photos: Vec<Vec<u8>>,
    pub photo_source: String,
    pub keys: Vec<String>,
    stop_load: Arc<AtomicBool>,
    load: Vec<tokio::task::JoinHandle<()>>,
    sampler: Option<tokio::task::JoinHandle<()>>,
    pid_table: Arc<Mutex<HashMap<&'static str, u32>>>,
    pub database: String,
    http: reqwest::Client,
    /// When the api was killed (-9), for the billing check's handoff rule.
    api_kills: Vec<Duration>,
    /// 200s handed over at an api kill and billed `resized` (see [`Rig::check_billing`]).
    pub handoff_losses: Mutex<Vec<String>>,
}

/// Real photos when the bench photo set is in the download cache (`benches/photos.sh`),
/// otherwise generated 1600×1200 JPEGs; and which of the two it was.
fn photos() -> (Vec<Vec<u8>>, String) {
    let cache = std::env::var_os("IMGPIPE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/imgpipe")));
    if let Some(dir) = cache.map(|c| c.join("photos"))
        && let Ok(entries) = std::fs::read_dir(&dir)
    {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
            .collect();
        files.sort();
        let photos: Vec<Vec<u8>> = files
            .iter()
            .take(8)
            .filter_map(|p| std::fs::read(p).ok())
            .collect();
        if !photos.is_empty() {
            return (
                photos,
                format!("{} real photos (benches/photos.sh)", files.len().min(8)),
            );
        }
    }
    (
        vec![crate::support::images::jpeg(1600, 1200)],
        "a generated 1600×1200 JPEG (no photo set in the cache)".into(),
    )
}

impl Rig {
    /// Stack up, services started and ready, tenants created.
    pub async fn start(brokers: usize, tenants: usize) -> Self {
        let t0 = Instant::now();
        progress(
            t0,
            &format!("starting a stack of its own ({brokers} Kafka nodes)"),
        );
        let stack = Stack::up(brokers).await;
        progress(
            t0,
            &format!("stack ready in {:.1}s", stack.start_time.as_secs_f64()),
        );
        let api = SocketAddr::from(([127, 0, 0, 1], free_port_run(1)));
        let identity = SocketAddr::from(([127, 0, 0, 1], free_port_run(1)));
        let database = "imgpipe".to_string();
        let common = vec![
            ("IMGPIPE_KAFKA__BROKERS".into(), stack.bootstrap()),
            ("IMGPIPE_REGISTRY__URL".into(), stack.registry_url()),
            ("IMGPIPE_CLICKHOUSE__URL".into(), stack.clickhouse_url()),
            ("IMGPIPE_CLICKHOUSE__DATABASE".into(), database.clone()),
            ("IMGPIPE_IDENTITY__ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("IMGPIPE_API__LISTEN".into(), api.to_string()),
            ("IMGPIPE_API__INSTANCE_ID".into(), "chaos-api".into()),
            (
                "IMGPIPE_API__REQUEST_TIMEOUT".into(),
                format!("{}s", DEADLINE.as_secs()),
            ),
            ("IMGPIPE_IDENTITY__LISTEN".into(), identity.to_string()),
            (
                "IMGPIPE_RESIZER__INSTANCE_ID".into(),
                "chaos-resizer".into(),
            ),
            ("IMGPIPE_RESIZER__WORKERS".into(), "1".into()),
            // A consumer that holds work without committing says so on /readyz after this; short
            // here, so a stall a fault leaves behind turns readiness red within the run.
            ("IMGPIPE_RESIZER__STALL_AFTER".into(), "10s".into()),
            ("IMGPIPE_AGGREGATOR__STALL_AFTER".into(), "10s".into()),
        ];
        let logs = stack.dir.path().join("services");
        std::fs::create_dir_all(&logs).unwrap();
        let mut services: Vec<Service> = ["identity", "api", "resizer", "aggregator"]
            .into_iter()
            .map(|name| Service::new(name, common.clone(), &logs))
            .collect();
        let http = reqwest::Client::new();
        for service in &mut services {
            service.spawn();
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for service in &mut services {
            while !service.ready(&http).await {
                assert!(
                    service.exited().is_none(),
                    "{} exited while starting: {}",
                    service.name,
                    service.log_tail()
                );
                assert!(Instant::now() < deadline, "{} not ready", service.name);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        progress(t0, "every service ready");
        let mut keys = Vec::new();
        for i in 0..tenants {
            let key = create_key(&http, identity, &format!("chaos-tenant-{i}")).await;
            keys.push(key);
        }
        for key in &keys {
            crate::support::wait_for_key(api, key).await;
        }
        let (photos, photo_source) = photos();
        let mut rig = Self {
            t0,
            stack,
            services,
            api,
            identity,
            samples: Arc::new(Mutex::new(Vec::new())),
            photos,
            photo_source,
            keys,
            stop_load: Arc::new(AtomicBool::new(false)),
            load: Vec::new(),
            sampler: None,
            pid_table: Arc::new(Mutex::new(HashMap::new())),
            database,
            http,
            api_kills: Vec::new(),
            handoff_losses: Mutex::new(Vec::new()),
        };
        rig.start_rss_sampler();
        rig
    }

    /// Samples each service's resident memory twice a second (the pid changes on restarts).
    fn start_rss_sampler(&mut self) {
        let shared: Vec<(Arc<Mutex<u64>>, &'static str)> = self
            .services
            .iter()
            .map(|s| (s.peak_rss_kib.clone(), s.name))
            .collect();
        let stop = self.stop_load.clone();
        self.refresh_pids();
        let pid_table = self.pid_table.clone();
        self.sampler = Some(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for (peak, name) in &shared {
                    let pid = pid_table.lock().unwrap().get(name).copied();
                    if let Some(kib) = pid.and_then(rss_kib) {
                        let mut peak = peak.lock().unwrap();
                        *peak = (*peak).max(kib);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }

    fn refresh_pids(&self) {
        let mut table = self.pid_table.lock().unwrap();
        table.clear();
        for service in &self.services {
            if let Some(pid) = service.pid() {
                table.insert(service.name, pid);
            }
        }
    }

    fn service(&mut self, name: &str) -> &mut Service {
        self.services.iter_mut().find(|s| s.name == name).unwrap()
    }

    /// Starts `workers` clients sending photos round-robin over the tenants until stopped.
    pub fn start_load(&mut self, workers: usize) {
        for worker in 0..workers {
            let (http, api, keys, photos) = (
                reqwest::Client::new(),
                self.api,
                self.keys.clone(),
                self.photos.clone(),
            );
            let (samples, stop, t0) = (self.samples.clone(), self.stop_load.clone(), self.t0);
            self.load.push(tokio::spawn(async move {
                let mut n = worker;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let tenant = n % keys.len();
                    let start = t0.elapsed();
                    let result = http
                        .post(format!("http://{api}/v1/resize?width=256&format=jpeg"))
                        .bearer_auth(&keys[tenant])
                        .body(photos[n % photos.len()].clone())
                        .timeout(DEADLINE + HANG_MARGIN)
                        .send()
                        .await;
                    let sample = match result {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let request_id = response
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = response.bytes().await;
                            let code = match (&body, status) {
                                (Err(_), _) => "body_cut".to_string(),
                                (Ok(_), 200) => String::new(),
                                (Ok(body), _) => serde_json::from_slice::<serde_json::Value>(body)
                                    .ok()
                                    .and_then(|v| v["code"].as_str().map(str::to_owned))
                                    .unwrap_or_else(|| "no_problem_body".into()),
                            };
                            // A 200 whose body did not arrive was not handed over in full.
                            let status = if body.is_err() { 0 } else { status };
                            Sample {
                                start,
                                end: t0.elapsed(),
                                tenant,
                                status,
                                code,
                                request_id,
                            }
                        }
                        Err(e) => {
                            let code = if e.is_timeout() {
                                "hung".to_string()
                            } else if e.is_connect() {
                                "connection_refused".to_string()
                            } else {
                                "connection_reset".to_string()
                            };
                            Sample {
                                start,
                                end: t0.elapsed(),
                                tenant,
                                status: 0,
                                code,
                                request_id: None,
                            }
                        }
                    };
                    let failed = sample.status != 200;
                    samples.lock().unwrap().push(sample);
                    if failed {
                        // A refused connection comes back at once; do not spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
    }

    /// Stops the clients and waits for their last requests.
    pub async fn stop_load(&mut self) {
        self.stop_load.store(true, Ordering::SeqCst);
        for task in self.load.drain(..) {
            task.await.unwrap();
        }
        if let Some(sampler) = self.sampler.take() {
            sampler.await.unwrap();
        }
    }

    /// Every service running and ready.
    async fn all_ready(&mut self) -> bool {
        self.not_ready().await.is_empty()
    }

    /// The services not running or not ready now.
    async fn not_ready(&mut self) -> Vec<&'static str> {
        let http = self.http.clone();
        let mut names = Vec::new();
        for service in &mut self.services {
            if !service.ready(&http).await {
                names.push(service.name);
            }
        }
        names
    }

    fn ok_after(&self, t: Duration) -> bool {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.start >= t && s.status == 200)
    }

    /// Injects `fault`, lifts it, and waits until the system is whole again.
    pub async fn inject(&mut self, fault: &Fault) -> FaultResult {
        tokio::time::sleep(STEADY).await;
        let start = self.t0.elapsed();
        progress(self.t0, &format!("fault: {}", fault.describe()));
        match fault {
            Fault::KillService(name, pause) => {
                if *name == "api" {
                    self.api_kills.push(self.t0.elapsed());
                }
                self.service(name).kill9();
                tokio::time::sleep(*pause).await;
                self.service(name).spawn();
                self.refresh_pids();
            }
            Fault::KillBroker(n, pause) => {
                let node = Stack::node(*n);
                block(|| self.stack.run(&["stop", &node, "--kill"]));
                tokio::time::sleep(*pause).await;
                block(|| self.stack.start_all(&[node]));
            }
            Fault::KillController(pause) => {
                let node = Stack::node(block(|| self.stack.controller()));
                progress(self.t0, &format!("active controller is {node}"));
                block(|| self.stack.run(&["stop", &node, "--kill"]));
                tokio::time::sleep(*pause).await;
                block(|| self.stack.start_all(&[node]));
            }
            Fault::KillTwoBrokers(pause) => {
                let nodes = [Stack::node(2), Stack::node(3)];
                for node in &nodes {
                    block(|| self.stack.run(&["stop", node, "--kill"]));
                }
                tokio::time::sleep(*pause).await;
                block(|| self.stack.start_all(&nodes));
            }
            Fault::StopServer(server, duration) => {
                block(|| self.stack.run(&["stop", server]));
                tokio::time::sleep(*duration).await;
                block(|| self.stack.start_all(&[(*server).to_string()]));
            }
            Fault::StopKafka(duration) => {
                let nodes: Vec<String> = (1..=self.stack.brokers).map(Stack::node).collect();
                // All at once, as a power cut would: a graceful stop of the last nodes would
                // wait for a quorum that is already gone.
                for node in &nodes {
                    block(|| self.stack.run(&["stop", node, "--kill"]));
                }
                tokio::time::sleep(*duration).await;
                block(|| self.stack.start_all(&nodes));
            }
            Fault::NetDelay(n, delay, duration) => {
                self.stack.relays[n - 1].set(netfault::Link::Delay(*delay));
                tokio::time::sleep(*duration).await;
                self.stack.relays[n - 1].set(netfault::Link::Up);
            }
            Fault::NetPartition(duration) => {
                let n = block(|| self.stack.busiest_leader("image.requests"));
                progress(self.t0, &format!("cutting off broker {n}"));
                self.stack.relays[n - 1].set(netfault::Link::Blackhole);
                tokio::time::sleep(*duration).await;
                self.stack.relays[n - 1].set(netfault::Link::Up);
            }
            Fault::NetPartitionCoordinator(group, duration) => {
                let n = block(|| self.stack.group_coordinator(group));
                progress(self.t0, &format!("cutting off broker {n}"));
                self.stack.relays[n - 1].set(netfault::Link::Blackhole);
                tokio::time::sleep(*duration).await;
                self.stack.relays[n - 1].set(netfault::Link::Up);
            }
        }
        let end = self.t0.elapsed();
        progress(self.t0, "fault lifted; waiting for recovery");
        // Whole again: every service ready by itself (none restarted by the test unless it was
        // the fault), and a request answered 200 after the fault ended.
        let mut recovered = None;
        let mut restarted = Vec::new();
        // The services still not ready at the last look before the recovery: the slowest.
        let mut last_ready = Vec::new();
        while self.t0.elapsed() < end + RECOVERY_BOUND {
            // A service that gave up and exited is started again, as its supervisor (systemd,
            // Compose's restart policy, Kubernetes) would; the report names it, since it did
            // not heal inside its own process.
            let mut respawned = false;
            for service in &mut self.services {
                if let Some(status) = service.exited() {
                    progress(
                        self.t0,
                        &format!(
                            "{} exited by itself ({status}); restarting it",
                            service.name
                        ),
                    );
                    restarted.push(service.name);
                    service.child = None;
                    service.spawn();
                    respawned = true;
                }
            }
            if respawned {
                self.refresh_pids();
            }
            let not_ready = self.not_ready().await;
            if not_ready.is_empty() && self.ok_after(end) {
                recovered = Some(self.t0.elapsed());
                break;
            }
            if !not_ready.is_empty() {
                last_ready = not_ready;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if recovered.is_none() {
            self.print_not_ready("").await;
        }
        // Let the requests in flight at the recovery finish, so they count in this phase.
        tokio::time::sleep(DEADLINE.min(Duration::from_secs(3))).await;
        let phase_end = recovered.unwrap_or(end + RECOVERY_BOUND);
        let samples = self.samples.lock().unwrap();
        // A request in flight when the fault began belongs to it as much as one started after.
        let phase: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.end >= start && s.start <= phase_end)
            .collect();
        let mut errors = BTreeMap::new();
        for s in phase.iter().filter(|s| s.status != 200) {
            *errors.entry(s.label()).or_default() += 1;
        }
        let result = FaultResult {
            fault: fault.describe(),
            start,
            end,
            recovered,
            ok: phase.iter().filter(|s| s.status == 200).count(),
            hung: phase.iter().filter(|s| s.code == "hung").count(),
            errors,
            ok_ids: phase
                .iter()
                .filter(|s| s.status == 200)
                .filter_map(|s| s.request_id.clone())
                .collect(),
            billing_exact: None,
            billing_detail: String::new(),
            restarted,
            last_ready,
        };
        progress(
            self.t0,
            &format!(
                "recovered: {:?} s after the fault started; {} ok, errors {:?}",
                recovered.map(|r| (r - start).as_secs_f64()),
                result.ok,
                result.errors
            ),
        );
        result
    }

    /// Prints `/readyz` and the end of the log of every service not ready now (`when` follows
    /// "not ready" in the line).
    async fn print_not_ready(&mut self, when: &str) {
        let http = self.http.clone();
        for service in &mut self.services {
            if !service.ready(&http).await {
                let readiness = service.readiness(&http).await;
                progress(
                    self.t0,
                    &format!(
                        "{} not ready{when}: {readiness}\n--- its log ends:\n{}",
                        service.name,
                        service.log_tail()
                    ),
                );
            }
        }
    }

    /// Waits (up to `bound`) until every service is ready; false, with each one's `/readyz`
    /// and log printed, if not. The suite's last check: a fault can leave a stall behind that
    /// shows only after the service's stall bound.
    pub async fn settled(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if self.all_ready().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.print_not_ready(" at the end").await;
        false
    }

    /// Peak resident memory of each service over the run, MiB.
    pub fn peak_rss(&self) -> Vec<(&'static str, u64)> {
        self.services
            .iter()
            .map(|s| (s.name, *s.peak_rss_kib.lock().unwrap() / 1024))
            .collect()
    }

    async fn clickhouse(&self, sql: &str) -> Option<String> {
        let response = self
            .http
            .post(self.stack.clickhouse_url())
            .body(sql.to_owned())
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .ok()?;
        response.error_for_status().ok()?.text().await.ok()
    }

    /// Compares what clients got with what is billed, once the aggregator has caught up: every
    /// 200 billed `ok` exactly once (one Kafka record, one row in the exact view), and nothing
    /// billed `ok` that no client got. Fills in each fault's verdict; returns every problem.
    pub async fn check_billing(&self, results: &mut [FaultResult]) -> Vec<String> {
        let samples = self.samples.lock().unwrap().clone();
        let given: HashSet<String> = samples
            .iter()
            .filter(|s| s.status == 200)
            .filter_map(|s| s.request_id.clone())
            .collect();
        let db = &self.database;
        // Wait (bounded) until every 200 is in ClickHouse: the aggregator catches up by itself.
        // Per (request, outcome): distinct Kafka records, rows.
        let mut records: HashMap<(String, String), (u64, u64)> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let sql = format!(
                "SELECT toString(request_id), outcome, \
                 toUInt64(uniqExact(kafka_partition, kafka_offset)), toUInt64(count()) \
                 FROM {db}.usage_raw WHERE outcome IN ('ok', 'resized') \
                 GROUP BY request_id, outcome FORMAT TSV"
            );
            if let Some(text) = self.clickhouse(&sql).await {
                records = text
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split('\t').collect();
                        Some((
                            (f.first()?.to_string(), f.get(1)?.to_string()),
                            (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?),
                        ))
                    })
                    .collect();
                if given
                    .iter()
                    .all(|id| records.contains_key(&(id.clone(), "ok".into())))
                {
                    break;
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let billed: HashMap<String, (u64, u64)> = records
            .iter()
            .filter(|((_, outcome), _)| outcome == "ok")
            .map(|((id, _), counts)| (id.clone(), *counts))
            .collect();
        let mut problems = Vec::new();
        // The one window no design closes (two generals): the api hands the image to the
        // connection, then writes its `ok` record; killed -9 in between, the client has its
        // image and billing has only the resizer's `resized` (never `ok` for what may not have
        // arrived). Allowed only for a 200 that arrived within HANDOFF_WINDOW of an api kill,
        // billed `resized` exactly once; counted in the report, never silently.
        let at_api_kill = |id: &String| {
            samples
                .iter()
                .find(|s| s.request_id.as_ref() == Some(id))
                .is_some_and(|s| {
                    self.api_kills.iter().any(|&kill| {
                        s.end + HANDOFF_WINDOW >= kill && s.end <= kill + HANDOFF_WINDOW
                    })
                })
                && records.get(&(id.clone(), "resized".into())) == Some(&(1, 1))
        };
        let (handoff, missing): (Vec<&String>, Vec<&String>) = given
            .iter()
            .filter(|id| !billed.contains_key(*id))
            .partition(|id| at_api_kill(id));
        self.handoff_losses
            .lock()
            .unwrap()
            .extend(handoff.iter().map(|id| (*id).clone()));
        let doubled: Vec<&String> = billed
            .iter()
            .filter(|(_, (records, _))| *records != 1)
            .map(|(id, _)| id)
            .collect();
        let unearned: Vec<&String> = billed.keys().filter(|id| !given.contains(*id)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} answered 200 but not billed ok, e.g. {:?}",
                missing.len(),
                missing.first()
            ));
        }
        if !doubled.is_empty() {
            problems.push(format!(
                "{} billed ok more than once, e.g. {:?}",
                doubled.len(),
                doubled.first()
            ));
        }
        if !unearned.is_empty() {
            problems.push(format!(
                "{} billed ok that no client got, e.g. {:?}",
                unearned.len(),
                unearned.first()
            ));
        }
        // The exact view agrees with the raw records.
        let expected_ok = given.len() - handoff.len();
        let view = self
            .clickhouse(&format!(
                "SELECT toUInt64(count()) FROM {db}.usage_by_request WHERE outcome = 'ok' FORMAT TSV"
            ))
            .await
            .and_then(|t| t.trim().parse::<usize>().ok());
        if view != Some(expected_ok) {
            problems.push(format!(
                "usage_by_request has {view:?} ok rows, clients got {} images ({} at an api kill)",
                given.len(),
                handoff.len()
            ));
        }
        for result in results.iter_mut() {
            let at_kill = result
                .ok_ids
                .iter()
                .filter(|id| handoff.contains(id))
                .count();
            let bad: Vec<&String> = result
                .ok_ids
                .iter()
                .filter(|id| !handoff.contains(id))
                .filter(|id| billed.get(*id).is_none_or(|(records, _)| *records != 1))
                .collect();
            result.billing_exact = Some(bad.is_empty() && unearned.is_empty());
            result.billing_detail = if bad.is_empty() && at_kill > 0 {
                format!(
                    "{} of {} billed `ok` once; {at_kill} handed over at the kill, billed `resized` once",
                    result.ok_ids.len() - at_kill,
                    result.ok_ids.len()
                )
            } else if bad.is_empty() {
                format!(
                    "{} of {} billed once",
                    result.ok_ids.len(),
                    result.ok_ids.len()
                )
            } else {
                format!(
                    "{} of {} not billed exactly once",
                    bad.len(),
                    result.ok_ids.len()
                )
            };
        }
        problems
    }

    /// All samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }
}

/// Runs a blocking stack command without stalling the clients' tasks.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn create_key(http: &reqwest::Client, identity: SocketAddr, name: &str) -> String {
    let tenant: serde_json::Value = http
        .post(format!("http://{identity}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"name": name, "rate_limit_per_second": 100000, "burst": 100000}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = tenant["id"].as_str().unwrap();
    let key: serde_json::Value = http
        .post(format!("http://{identity}/admin/v1/tenants/{id}/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    key["api_key"].as_str().unwrap().to_owned()
}
