//! Prometheus metrics, served on `/metrics` by the HTTP side listener ([`crate::http`]).
//!
//! No global registry: one [`Metrics`] is owned by the running plugin and lives as long as it does.
//! - What happens on a call is counted where it happens: gRPC requests by the API layer
//!   ([`Metrics::request`]), key-provider calls by the [`crate::provider::metered::Metered`] decorator that
//!   the keyring puts around every provider ([`ProviderMetrics`], an [`Observer`]), reloads by the plugin.
//! - What the plugin *is* (data-key counters and cache, degraded and health flags, the primary key) is a
//!   [`Snapshot`] that the plugin takes at scrape time and hands to [`render`]; this module never reaches
//!   into the plugin, and nothing is duplicated in a second set of counters.
//!
//! Every name starts with `gm_kms_`; counters end in `_total`, durations are histograms in seconds. Beside
//! them, the `process_*` metrics that Prometheus client libraries export under these names (resident
//! memory, open file descriptors, CPU seconds, start time), read from `/proc/self` at scrape time
//! ([`ProcessStats`]) so dashboards and alerts written for any exporter work as they are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tonic::Code;

use crate::error::ErrorKind;
use crate::provider::metered::Observer;

/// Every metric name starts with this (and `_`).
pub(crate) const PREFIX: &str = "gm_kms";

/// `Content-Type` of the OpenMetrics text exposition (what Prometheus asks for first).
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text exposition 0.0.4 (what plain HTTP clients get).
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency bucket bounds in seconds, 10 µs to 10 s: an SM2 unwrap or a cached-key open takes tens of
/// microseconds, a remote KMS call milliseconds, a timed-out one seconds.
const LATENCY_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram_family<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

/// Which text format `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0 text (ends with `# EOF`).
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// OpenMetrics when the `Accept` header asks for it (as Prometheus does), else the classic text format.
    pub(crate) fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// The KMS API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V2,
}

impl Api {
    fn label(self) -> &'static str {
        match self {
            Api::V1 => "v1",
            Api::V2 => "v2",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    api: &'static str,
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderCallLabels {
    provider: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderOpLabels {
    provider: &'static str,
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// Why the KMS socket closes a connection without serving it: the `reason` values of
/// `gm_kms_connections_refused_total`, as the accept loop reports them (`server::Refusal::label`).
pub(crate) const CONNECTION_REFUSAL_REASONS: [&str; 4] = [
    "peer_uid",
    "peer_unknown",
    "connection_limit",
    "handshake_timeout",
];

/// A gRPC code as grpc-go spells it (`OK`, `InvalidArgument`, …): the label value other gRPC exporters
/// use, so dashboards and alerts carry over.
pub(crate) fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Key-provider call metrics; cheap to clone (the families are shared), so each metered provider holds one.
#[derive(Debug, Clone)]
pub(crate) struct ProviderMetrics {
    calls: Family<ProviderCallLabels, Counter>,
    duration: HistogramFamily<ProviderOpLabels>,
}

impl ProviderMetrics {
    fn new() -> Self {
        Self {
            calls: Family::default(),
            duration: histogram_family(),
        }
    }
}

impl Observer for ProviderMetrics {
    fn observe(
        &self,
        provider: &'static str,
        operation: &'static str,
        outcome: Result<(), ErrorKind>,
        elapsed: Duration,
    ) {
        let outcome = outcome.map_or_else(ErrorKind::label, |()| "ok");
        self.calls
            .get_or_create(&ProviderCallLabels {
                provider,
                operation,
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&ProviderOpLabels {
                provider,
                operation,
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The plugin's metrics. Created with the plugin; see the module doc for what is counted where.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<MethodLabels>,
    provider: ProviderMetrics,
    reloads: Family<ReloadLabels, Counter>,
    connections_refused: Family<RefusedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "KMS gRPC requests handled, by API (v1 = v1beta1, v2), method and gRPC status code",
            requests.clone(),
        );
        let request_duration = histogram_family();
        registry.register_with_unit(
            "request_duration",
            "Time to handle a KMS gRPC request, by API and method",
            Unit::Seconds,
            request_duration.clone(),
        );
        let provider = ProviderMetrics::new();
        registry.register(
            "provider_calls",
            "Key-provider calls (wrap or unwrap a data key), by provider, operation and outcome",
            provider.calls.clone(),
        );
        registry.register_with_unit(
            "provider_call_duration",
            "Time of a key-provider call, by provider and operation",
            Unit::Seconds,
            provider.duration.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        // Both series exist from the start, so an alert on failures has a zero to compare with.
        for result in ["success", "failure"] {
            reloads.get_or_create(&ReloadLabels { result }).inc_by(0);
        }
        registry.register(
            "reloads",
            "Configuration reloads (SIGHUP), by result; a failed reload leaves the running config in force",
            reloads.clone(),
        );
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        // Every reason exists from the start, so an alert on refused peers has a zero to compare with.
        for reason in CONNECTION_REFUSAL_REASONS {
            connections_refused
                .get_or_create(&RefusedLabels { reason })
                .inc_by(0);
        }
        registry.register(
            "connections_refused",
            "Connections on the KMS socket closed without being served, by reason: peer_uid (SO_PEERCRED \
             uid not in AllowedPeerUids), peer_unknown, connection_limit, handshake_timeout",
            connections_refused.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new([("version", crate::RUNTIME_VERSION)]),
        );
        Self {
            registry,
            requests,
            request_duration,
            provider,
            reloads,
            connections_refused,
        }
    }

    /// The registry of the counters and histograms (without the state read at scrape time).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The observer the keyring gives each metered provider.
    pub fn provider(&self) -> Arc<dyn Observer> {
        Arc::new(self.provider.clone())
    }

    /// Starts timing one gRPC request; [`RequestTimer::finish`] records it. A request whose future is
    /// dropped before it finishes (the client went away) is recorded as `Canceled`.
    pub fn request(&self, api: Api, method: &'static str) -> RequestTimer<'_> {
        RequestTimer {
            metrics: self,
            api,
            method,
            start: Instant::now(),
            done: false,
        }
    }

    fn record_request(&self, api: Api, method: &'static str, code: Code, elapsed: Duration) {
        let api = api.label();
        self.requests
            .get_or_create(&RequestLabels {
                api,
                method,
                code: code_label(code),
            })
            .inc();
        self.request_duration
            .get_or_create(&MethodLabels { api, method })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one reload attempt.
    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Counts one connection the KMS socket closed without serving it; `reason` is one of
    /// [`CONNECTION_REFUSAL_REASONS`].
    pub fn record_connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }
}

/// Times one request; see [`Metrics::request`].
pub struct RequestTimer<'a> {
    metrics: &'a Metrics,
    api: Api,
    method: &'static str,
    start: Instant,
    done: bool,
}

impl RequestTimer<'_> {
    pub fn finish(mut self, code: Code) {
        self.done = true;
        self.metrics
            .record_request(self.api, self.method, code, self.start.elapsed());
    }
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.record_request(
                self.api,
                self.method,
                Code::Cancelled,
                self.start.elapsed(),
            );
        }
    }
}

/// The plugin's state at scrape time, taken by the plugin and encoded by [`render`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// New data keys made and wrapped.
    pub rotations: u64,
    /// Failed attempts to wrap a new data key.
    pub wrap_failures: u64,
    /// Decrypts served from the unwrap cache.
    pub cache_hits: u64,
    /// Decrypts that needed a provider unwrap.
    pub cache_misses: u64,
    /// Provider unwrap calls made for the cache.
    pub unwraps: u64,
    /// Of those, the failed ones.
    pub unwrap_failures: u64,
    /// Decrypts answered from a legacy ciphertext.
    pub legacy_reads: u64,
    /// Unwrapped data keys in the cache.
    pub cache_size: usize,
    /// Messages sealed with the current data key.
    pub current_uses: u64,
    /// Sealing continues past policy on an old data key.
    pub degraded: bool,
    /// The last background key round trip succeeded.
    pub healthy: bool,
    /// The primary key-encryption key's id.
    pub primary_key_id: String,
    /// The primary key's provider (`sm2`, `jdcloud`, `sdf`).
    pub primary_provider: &'static str,
    /// Key-encryption keys in the keyring.
    pub keys: usize,
    /// This process, as the OS sees it.
    pub process: ProcessStats,
}

/// What `/proc/self` says about this process; a field the OS did not give is `None` and not exported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds (`process_cpu_seconds_total`).
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors (`process_open_fds`).
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors (`process_max_fds`).
    pub max_fds: Option<u64>,
    /// Virtual memory size in bytes (`process_virtual_memory_bytes`).
    pub virtual_memory_bytes: Option<u64>,
    /// Resident memory in bytes (`process_resident_memory_bytes`).
    pub resident_memory_bytes: Option<u64>,
    /// Start time, seconds since the Unix epoch (`process_start_time_seconds`).
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self` (Linux). Plain reads of small text files; whatever cannot be read or parsed is
    /// left out, never guessed.
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s));
        let status = read("/proc/self/status").unwrap_or_default();
        let ticks = read_clock_ticks().unwrap_or(100) as f64;
        let boot = read("/proc/stat").and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        Self {
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / ticks),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                // The directory handle used to list it is one of the entries; it is not the process's.
                .map(|d| d.count().saturating_sub(1) as u64),
            max_fds: read("/proc/self/limits").and_then(|s| parse_max_open_files(&s)),
            virtual_memory_bytes: status_kib(&status, "VmSize:").map(|k| k * 1024),
            resident_memory_bytes: status_kib(&status, "VmRSS:").map(|k| k * 1024),
            start_time_seconds: stat
                .zip(boot)
                .map(|(s, b)| b as f64 + s.starttime as f64 / ticks),
        }
    }
}

/// The fields of `/proc/self/stat` used here, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state …`, where comm may hold spaces and parentheses, so the
/// fields are counted from the last `)`. utime, stime and starttime are fields 14, 15 and 22 (proc(5)).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// A `Name:  123 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(name))?;
    let mut parts = line.split_whitespace();
    let n = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(n)
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Clock ticks per second (`AT_CLKTCK` of `/proc/self/auxv`: native-endian word pairs, type then value),
/// which the tick counts of `/proc/self/stat` are in.
fn read_clock_ticks() -> Option<u64> {
    const AT_CLKTCK: u64 = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    let word = |b: &[u8]| -> Option<u64> {
        let mut w = [0u8; WORD];
        w.copy_from_slice(b.get(..WORD)?);
        Some(usize::from_ne_bytes(w) as u64)
    };
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let (key, value) = pair.split_at(WORD);
        (word(key)? == AT_CLKTCK).then(|| word(value)).flatten()
    })
}

impl Collector for ProcessStats {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        if let Some(v) = self.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_open_fds",
                "Number of open file descriptors.",
                self.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                self.max_fds,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                self.virtual_memory_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                self.resident_memory_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v.min(i64::MAX as u64) as i64);
                g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        if let Some(v) = self.start_time_seconds {
            let g = ConstGauge::new(v);
            g.encode(e.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    // Help text ends with a period, as the registry writes it for registered metrics.
    c.encode(e.encode_descriptor(name, &format!("{help}."), None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, &format!("{help}."), None, g.metric_type())?)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        counter(
            e,
            "data_key_rotations",
            "New data keys made and wrapped by the primary key (policy, age or primary-key change)",
            self.rotations,
        )?;
        counter(
            e,
            "data_key_wrap_failures",
            "Failed attempts to wrap a new data key (the current one keeps sealing meanwhile)",
            self.wrap_failures,
        )?;
        counter(
            e,
            "data_key_cache_hits",
            "Decrypts whose data key was already unwrapped in the cache",
            self.cache_hits,
        )?;
        counter(
            e,
            "data_key_cache_misses",
            "Decrypts whose data key had to be unwrapped by its key provider",
            self.cache_misses,
        )?;
        counter(
            e,
            "data_key_unwraps",
            "Provider unwrap calls made for the cache (concurrent misses for one key share one call)",
            self.unwraps,
        )?;
        counter(
            e,
            "data_key_unwrap_failures",
            "Provider unwrap calls for the cache that failed",
            self.unwrap_failures,
        )?;
        counter(
            e,
            "legacy_reads",
            "Decrypts answered from a legacy ciphertext of JD Cloud's plugin (storage migration pending while this grows)",
            self.legacy_reads,
        )?;
        gauge(
            e,
            "data_key_cache_size",
            "Unwrapped data keys held in the cache",
            self.cache_size as i64,
        )?;
        gauge(
            e,
            "data_key_current_uses",
            "Messages sealed so far with the current data key (0 before the first Encrypt)",
            self.current_uses.min(i64::MAX as u64) as i64,
        )?;
        gauge(
            e,
            "degraded",
            "1 while sealing continues on a data key past its policy because the provider cannot wrap a new one",
            i64::from(self.degraded),
        )?;
        gauge(
            e,
            "healthy",
            "1 when the last background seal/open round trip through the primary key succeeded (what /healthz answers)",
            i64::from(self.healthy),
        )?;
        gauge(
            e,
            "keys",
            "Key-encryption keys in the keyring (the primary and PreviousKeys)",
            self.keys as i64,
        )?;
        let info = Info::new(vec![
            ("key_id".to_string(), self.primary_key_id.clone()),
            ("provider".to_string(), self.primary_provider.to_string()),
        ]);
        info.encode(e.encode_descriptor(
            "primary_key",
            "The primary key-encryption key: new data keys are wrapped by it, v2 Status reports its id.",
            None,
            info.metric_type(),
        )?)
    }
}

/// The `/metrics` text: the counters and histograms of `metrics`, then the plugin's state `now`.
pub(crate) fn render(metrics: &Metrics, mut now: Snapshot, format: Format) -> String {
    // The process metrics carry no prefix: their names are the ones every exporter uses.
    let mut process = Registry::default();
    process.register_collector(Box::new(std::mem::take(&mut now.process)));
    let mut state = Registry::with_prefix(PREFIX);
    state.register_collector(Box::new(now));
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; an encoder error would be a bug in a metric, and a scrape should
    // still return what was encoded.
    let _ = match format {
        Format::OpenMetrics => {
            use prometheus_client::encoding::text;
            text::encode_registry(&mut out, metrics.registry())
                .and_then(|()| text::encode_registry(&mut out, &state))
                .and_then(|()| text::encode_registry(&mut out, &process))
                .and_then(|()| text::encode_eof(&mut out))
        }
        Format::Prometheus => {
            use prometheus_client::encoding::prometheus_text::encode;
            encode(&mut out, metrics.registry())
                .and_then(|()| encode(&mut out, &state))
                .and_then(|()| encode(&mut out, &process))
        }
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_of_this_process() {
        let p = ProcessStats::current();
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(
            p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap_or(0)),
            "{p:?}"
        );
        assert!(
            p.resident_memory_bytes.is_some_and(|b| b > 1 << 20),
            "{p:?}"
        );
        assert!(p.virtual_memory_bytes >= p.resident_memory_bytes, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.expect("start time");
        assert!(
            start <= now + 1.0 && start > now - 24.0 * 3600.0,
            "{start} vs {now}"
        );
        let text = render(
            &Metrics::new(),
            Snapshot {
                process: p,
                ..Snapshot::default()
            },
            Format::Prometheus,
        );
        for name in [
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_virtual_memory_bytes",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("\n# TYPE {name} ")) || text.contains(&format!("\n{name} ")),
                "{name} missing from:\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
    }

    #[test]
    fn proc_files_are_parsed_however_the_command_name_looks() {
        let stat = "4242 (gm (kms) plugin) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    9 0 123456 1000000 500 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                utime: 250,
                stime: 50,
                starttime: 123456
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        let status = "Name:\tgm-kms-plugin\nVmSize:\t  123456 kB\nVmRSS:\t   2048 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(status_kib(status, "VmSize:"), Some(123456));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
    }

    #[test]
    fn code_labels_match_grpc_go() {
        assert_eq!(code_label(Code::Ok), "OK");
        assert_eq!(code_label(Code::Cancelled), "Canceled");
        assert_eq!(code_label(Code::InvalidArgument), "InvalidArgument");
    }

    #[test]
    fn format_negotiation() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn request_timer_counts_finished_and_dropped_requests() {
        let m = Metrics::new();
        m.request(Api::V2, "Encrypt").finish(Code::Ok);
        m.request(Api::V2, "Encrypt").finish(Code::Ok);
        drop(m.request(Api::V1, "Decrypt"));
        let ok = RequestLabels {
            api: "v2",
            method: "Encrypt",
            code: "OK",
        };
        assert_eq!(m.requests.get_or_create(&ok).get(), 2);
        let canceled = RequestLabels {
            api: "v1",
            method: "Decrypt",
            code: "Canceled",
        };
        assert_eq!(m.requests.get_or_create(&canceled).get(), 1);
        m.record_reload(false);
        assert_eq!(
            m.reloads
                .get_or_create(&ReloadLabels { result: "failure" })
                .get(),
            1
        );
    }

    #[test]
    fn provider_calls_are_labelled_by_outcome_kind() {
        let m = Metrics::new();
        let o = m.provider();
        o.observe(
            "test",
            "wrap",
            Err(ErrorKind::Unavailable),
            Duration::from_millis(3),
        );
        o.observe("test", "unwrap", Ok(()), Duration::from_micros(40));
        o.observe("test", "unwrap", Ok(()), Duration::from_micros(40));
        let text = render(&m, Snapshot::default(), Format::Prometheus);
        for line in [
            r#"gm_kms_provider_calls_total{provider="test",operation="wrap",outcome="unavailable"} 1"#,
            r#"gm_kms_provider_calls_total{provider="test",operation="unwrap",outcome="ok"} 2"#,
            r#"gm_kms_provider_call_duration_seconds_count{provider="test",operation="unwrap"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
