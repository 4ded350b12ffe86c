//! Logging: stderr (stdout carries `encrypt`/`decrypt` output and `check`'s report), human or JSON lines,
//! and a level that a `SIGHUP` reload can change while the plugin serves.
//!
//! The level, first that applies: `RUST_LOG` (a full `tracing` filter), `--log-level`, then for `serve`
//! the config's `LogLevel`, then its `DebugMode` (`debug`), then the command's own default: `info` for
//! `serve`, `warn` for `encrypt`/`decrypt` (their output is the data, not a story about data keys), `off`
//! for `check` (it prints its own report and one verdict line). Only a level that comes from the config
//! changes on reload; `RUST_LOG` and `--log-level` hold for the life of the process.

use std::fmt::Write as _;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use super::LogFormat;
use crate::config::{Config, LogLevel};

/// What the command asks of logging, fixed at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub format: LogFormat,
    /// `--log-level`.
    pub cli_level: Option<LogLevel>,
    /// The level when neither `RUST_LOG`, `--log-level` nor (for `serve`) the config sets one.
    pub default: LogLevel,
    /// Whether the config's `LogLevel`/`DebugMode` apply (they do for `serve` only).
    pub from_config: bool,
}

struct State {
    handle: reload::Handle<EnvFilter, Registry>,
    settings: Settings,
    /// `RUST_LOG` was set and valid: it rules, and reloads leave it alone.
    env: bool,
    /// The directive in force.
    current: std::sync::Mutex<String>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// The filter directive for a level: the plugin's own events at `level`, other crates' (h2, hyper,
/// tonic) at most at `info`, so `debug` shows what the plugin does without every HTTP/2 frame.
fn directive(level: LogLevel) -> String {
    match level {
        LogLevel::Debug | LogLevel::Trace => format!("gm_kms_plugin={},info", level.as_str()),
        other => other.as_str().to_string(),
    }
}

/// The level the settings and (when they apply) the config give.
fn level_for(settings: &Settings, config: Option<&Config>) -> LogLevel {
    if let Some(l) = settings.cli_level {
        return l;
    }
    match config.filter(|_| settings.from_config) {
        Some(c) => c.log_level.unwrap_or(if c.debug {
            LogLevel::Debug
        } else {
            settings.default
        }),
        None => settings.default,
    }
}

/// Installs the global subscriber. Call once, before the first event; `config` is the loaded config
/// when there is one.
pub(crate) fn init(settings: Settings, config: Option<&Config>) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(&v).ok().map(|f| (f, v)));
    let env = from_env.is_some();
    let (filter, current) = match from_env {
        Some((f, v)) => (f, v),
        None => {
            let d = directive(level_for(&settings, config));
            (EnvFilter::new(&d), d)
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let human = (settings.format == LogFormat::Human).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour codes only on a terminal: journald and kubectl logs get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let json = (settings.format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(JsonLines)
    });
    if tracing_subscriber::registry()
        .with(filter)
        .with(human)
        .with(json)
        .try_init()
        .is_ok()
    {
        let _ = STATE.set(State {
            handle,
            settings,
            env,
            current: std::sync::Mutex::new(current),
        });
    }
}

/// Applies the level of a reloaded config (`LogLevel`, `DebugMode`) at once, unless `RUST_LOG` or
/// `--log-level` fixed it, and says so in an INFO line: before the change when the old level shows it,
/// after it otherwise.
pub(crate) fn apply(config: &Config) {
    let Some(state) = STATE.get() else {
        return;
    };
    if state.env {
        return;
    }
    let d = directive(level_for(&state.settings, Some(config)));
    let mut current = state.current.lock().unwrap_or_else(|p| p.into_inner());
    if *current == d {
        return;
    }
    let said = tracing::enabled!(tracing::Level::INFO);
    if said {
        tracing::info!(from = %current, to = %d, "log level changed");
    }
    match state.handle.reload(EnvFilter::new(&d)) {
        Ok(()) => {
            if !said {
                tracing::info!(from = %current, to = %d, "log level changed");
            }
            *current = d;
        }
        Err(e) => tracing::error!(error = %e, "cannot change the log level"),
    }
}

/// Fields logged as lists: their `?` value (Rust's `["a", "b"]`) is written as a JSON array.
const ARRAY_FIELDS: &[&str] = &["keys"];

/// JSON lines: `timestamp`, `level`, the event's fields (`message` first), `target`. Like
/// tracing-subscriber's own JSON format with `flatten_event`, except that [`ARRAY_FIELDS`] are arrays.
struct JsonLines;

#[derive(Default)]
struct JsonFields(Vec<(&'static str, serde_json::Value)>);

impl JsonFields {
    fn push(&mut self, field: &Field, value: serde_json::Value) {
        self.0.push((field.name(), value));
    }
}

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if ARRAY_FIELDS.contains(&field.name())
            && let Ok(list) = serde_json::from_str::<Vec<String>>(&text)
        {
            return self.push(field, list.into());
        }
        self.push(field, text.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut timestamp = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        fields.0.sort_by_key(|(name, _)| *name != "message");
        let meta = event.metadata();
        let mut line = String::with_capacity(256);
        write!(
            line,
            "{{\"timestamp\":{},\"level\":{}",
            json(&timestamp),
            json(meta.level().as_str())
        )?;
        for (name, value) in &fields.0 {
            write!(line, ",{}:{}", json(name), value)?;
        }
        writeln!(line, ",\"target\":{}}}", json(meta.target()))?;
        writer.write_str(&line)
    }
}

/// A string as JSON text.
fn json(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cli_level: Option<LogLevel>, from_config: bool) -> Settings {
        Settings {
            format: LogFormat::Human,
            cli_level,
            default: LogLevel::Info,
            from_config,
        }
    }

    fn config(extra: serde_json::Value) -> Config {
        let mut v = serde_json::json!({"Sm2PrivateKeyFile": "/k.pem"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Config::parse(&v.to_string(), std::path::Path::new("/c.json")).unwrap()
    }

    #[test]
    fn levels_in_order_of_precedence() {
        let debug = config(serde_json::json!({"DebugMode": true}));
        let warn = config(serde_json::json!({"DebugMode": true, "LogLevel": "warn"}));
        let plain = config(serde_json::json!({}));
        let s = settings(None, true);
        assert_eq!(level_for(&s, Some(&plain)), LogLevel::Info);
        assert_eq!(level_for(&s, Some(&debug)), LogLevel::Debug);
        assert_eq!(level_for(&s, Some(&warn)), LogLevel::Warn);
        // --log-level beats the config; one-shot commands ignore the config's level.
        let s = settings(Some(LogLevel::Error), true);
        assert_eq!(level_for(&s, Some(&debug)), LogLevel::Error);
        let s = settings(None, false);
        assert_eq!(level_for(&s, Some(&debug)), LogLevel::Info);
        assert_eq!(directive(LogLevel::Debug), "gm_kms_plugin=debug,info");
        assert_eq!(directive(LogLevel::Off), "off");
    }
}
