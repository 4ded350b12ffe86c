//! The command line: `serve` (the default), `keygen`, `check`, `encrypt`, `decrypt`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::plugin::Plugin;

/// Kubernetes KMS plugin (API v1beta1 and v2) sealing Secrets with SM4-GCM under SM2 or JD Cloud KMS keys.
#[derive(Debug, Parser)]
#[command(name = "gm-kms-plugin", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (JSON; the config of JD Cloud's k8s-kms-plugin works as it is).
    #[arg(short = 'f', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// What to do; `serve` when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve KMS v1beta1 and v2 on the configured unix socket (the default command).
    Serve,
    /// Write a new SM2 key pair: DIR/sm2-key.pem (PKCS#8, mode 0600) and DIR/sm2-pub.pem; print its key id.
    Keygen {
        /// Directory to write the key pair into (created if missing; existing files are never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Validate the config and keys, run the self-tests and a seal/open round trip; non-zero exit on failure.
    Check,
    /// Seal stdin and write the ciphertext (raw format-1 bytes) to stdout.
    Encrypt,
    /// Open a ciphertext from stdin and write the plaintext to stdout.
    Decrypt,
}

/// Largest input `encrypt`/`decrypt` read from stdin.
const MAX_STDIN: u64 = 64 * 1024 * 1024;

/// Runs the command line: serves, or runs a one-shot command.
pub fn run(cli: Cli) -> Result<()> {
    let configured = || -> Result<Config> {
        let config = load_config(cli.config.as_deref())?;
        init_logging(cli.log_format, config.debug);
        Ok(config)
    };
    match &cli.command {
        Some(Command::Keygen { out }) => keygen(out),
        None | Some(Command::Serve) => runtime()?.block_on(serve(configured()?)),
        Some(Command::Check) => runtime()?.block_on(check(configured()?)),
        Some(Command::Encrypt) => filter_stdin(configured()?, true),
        Some(Command::Decrypt) => filter_stdin(configured()?, false),
    }
}

/// `encrypt` (`seal`) or `decrypt`: stdin to stdout, offline, with the plugin's own keys and format.
fn filter_stdin(config: Config, seal: bool) -> Result<()> {
    let input = read_stdin()?;
    let out = runtime()?.block_on(async {
        let plugin = Plugin::load(config)?;
        anyhow::Ok(if seal {
            plugin.envelope().seal(&input).await?.ciphertext
        } else {
            plugin.envelope().open(&input).await?.to_vec()
        })
    })?;
    write_stdout(&out)
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let path = path.context("no config file: pass -f CONFIG (see docs/configuration.md)")?;
    Ok(Config::load(path)?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Logs go to stderr (stdout carries `encrypt`/`decrypt` output). `RUST_LOG` overrides the level.
fn init_logging(format: LogFormat, debug: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if debug {
        "gm_kms_plugin=debug,info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: journald and kubectl logs get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .context("cannot read stdin")?;
    if buf.len() as u64 > MAX_STDIN {
        bail!("stdin is larger than {MAX_STDIN} bytes");
    }
    Ok(buf)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).context("cannot write stdout")?;
    out.flush().context("cannot write stdout")
}

fn keygen(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (private, public, id) = crate::provider::sm2::generate_pem()?;
    let key_path = dir.join("sm2-key.pem");
    let pub_path = dir.join("sm2-pub.pem");
    for p in [&key_path, &pub_path] {
        if p.exists() {
            bail!("{} exists; refusing to overwrite a key", p.display());
        }
    }
    crate::keyfile::write_secret_file(&key_path, private.as_bytes())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    std::fs::write(&pub_path, public.as_bytes())
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    eprintln!(
        "wrote {} (private, 0600) and {}",
        key_path.display(),
        pub_path.display()
    );
    println!("{id}");
    Ok(())
}

async fn check(config: Config) -> Result<()> {
    let plugin = Plugin::load(config).context("loading config and keys")?;
    println!("config {}: ok", plugin.config().path.display());
    println!("self-tests (SM2, SM3, SM4, SM4-GCM known answers): ok");
    let keyring = plugin.datakeys().keyring();
    let mut failed = false;
    for id in keyring.ids() {
        let Some(p) = keyring.get(id) else {
            continue;
        };
        let role = if id == keyring.primary().kek_id() {
            "primary"
        } else {
            "previous"
        };
        match p.describe().await {
            Ok(line) => println!("key {id} ({role}, {}): {line}", p.kind()),
            Err(e) => {
                failed = true;
                println!("key {id} ({role}, {}): FAILED: {e}", p.kind());
            }
        }
    }
    println!(
        "legacy ciphertexts (JD Cloud plugin form): {}",
        legacy_line(&plugin)
    );
    match plugin.health().probe(&plugin.datakeys()).await {
        Ok(()) => println!("primary key wrap/unwrap round trip: ok"),
        Err(e) => {
            failed = true;
            println!("primary key wrap/unwrap round trip: FAILED: {e}");
        }
    }
    let probe = b"gm-kms-plugin check";
    let sealed = plugin.envelope().seal(probe).await.context("seal")?;
    let opened = plugin
        .envelope()
        .open(&sealed.ciphertext)
        .await
        .context("open")?;
    if opened.as_slice() != probe {
        bail!("seal/open round trip returned different bytes");
    }
    println!(
        "seal/open round trip: ok ({} bytes of ciphertext for {} bytes, key {})",
        sealed.ciphertext.len(),
        probe.len(),
        sealed.kek_id
    );
    if failed {
        bail!("check failed");
    }
    Ok(())
}

/// Which keys read legacy ciphertexts, in the order they are tried, and how many legacy reads this process
/// has answered (DESIGN §2; docs/migration-from-jdcloud-plugin.md).
fn legacy_line(plugin: &Plugin) -> String {
    let datakeys = plugin.datakeys();
    let keyring = datakeys.keyring();
    let keys: Vec<&str> = keyring
        .legacy_readers()
        .iter()
        .map(|p| p.kek_id())
        .collect();
    if keys.is_empty() {
        return "not read (no key has LegacyCiphertexts)".into();
    }
    let reads = datakeys
        .stats()
        .legacy_reads
        .load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "read through {} (tried in this order); legacy reads by this process: {reads}",
        keys.join(", ")
    )
}

async fn serve(config: Config) -> Result<()> {
    let started = std::time::Instant::now();
    let plugin = Plugin::load(config).context("loading config and keys")?;
    let config = plugin.config();
    let socket = crate::server::bind(&config.socket)?;
    let keyring = plugin.datakeys().keyring();
    tracing::info!(
        version = crate::RUNTIME_VERSION,
        socket = %config.socket,
        primary = keyring.primary().kek_id(),
        keys = ?keyring.ids(),
        legacy = %legacy_line(&plugin),
        kms_v2_version = %config.kms_v2_version,
        ready_ms = started.elapsed().as_millis() as u64,
        "gm-kms-plugin serving KMS v1beta1 and v2"
    );
    let prober = crate::health::spawn_prober(plugin.datakeys(), plugin.health());
    // The HTTP side door (/livez /healthz /metrics): binds in the background, so a busy port never delays
    // or stops the KMS socket (DESIGN §5).
    let http = config
        .health_addr
        .map(|addr| crate::http::spawn(plugin.clone(), addr));
    let reloader = tokio::spawn(reload_on_sighup(plugin.clone()));
    let result = crate::server::serve(plugin.backend(), socket, shutdown_signal()).await;
    prober.abort();
    reloader.abort();
    if let Some(http) = http {
        http.abort();
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn reload_on_sighup(plugin: Arc<Plugin>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install SIGHUP handler; reloads disabled");
        return;
    };
    while hup.recv().await.is_some() {
        let before = plugin.envelope().primary_kek_id();
        match plugin.reload() {
            Ok(primary) if primary != before => {
                tracing::info!(from = %before, to = %primary, "reloaded: primary key rotated")
            }
            Ok(primary) => tracing::info!(%primary, "reloaded"),
            Err(e) => tracing::error!(error = %e, "reload refused; the running config stays"),
        }
    }
}
