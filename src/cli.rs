//! The command line: `serve` (the default), `keygen`, `check`, `encrypt`, `decrypt`, `recover`, `status`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, LogLevel};
use crate::plugin::Plugin;

mod logging;
mod signals;

/// Where the config is read from when `-f` is not given: where deploy/ puts it on a node.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/k8s-kms-plugin/config.json";

/// Kubernetes KMS plugin (API v1beta1 and v2) sealing Secrets with SM4-GCM under SM2 or JD Cloud KMS keys.
#[derive(Debug, Parser)]
#[command(name = "gm-kms-plugin", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (JSON; the config of JD Cloud's k8s-kms-plugin works as it is)
    /// [default: /etc/k8s-kms-plugin/config.json].
    #[arg(short = 'f', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log level: off, error, warn, info, debug or trace. Default: the config's LogLevel (DebugMode:
    /// debug) when serving, else info; warn for encrypt/decrypt; off for check. RUST_LOG overrides it.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = LogLevel::parse)]
    pub log_level: Option<LogLevel>,

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
        // keygen reads no config and logs nothing: these shadow the global options of the same ids, so
        // `keygen --help` does not list them, and `-f` is refused instead of ignored.
        #[arg(short = 'f', long = "config", id = "config", hide = true)]
        #[doc(hidden)]
        no_config: Option<PathBuf>,
        #[arg(long = "log-format", id = "log_format", hide = true, value_enum)]
        #[doc(hidden)]
        no_log_format: Option<LogFormat>,
        #[arg(long = "log-level", id = "log_level", hide = true, value_parser = LogLevel::parse)]
        #[doc(hidden)]
        no_log_level: Option<LogLevel>,
    },
    /// Validate the config and keys, run the self-tests and a seal/open round trip; non-zero exit on failure.
    Check,
    /// Seal stdin and write the ciphertext (raw format-1 bytes) to stdout.
    Encrypt,
    /// Open a ciphertext from stdin and write the plaintext to stdout.
    Decrypt,
    /// Open a value as kube-apiserver stored it in etcd (KMS v1 or v2) from stdin, with the config's keys
    /// or one SM2 key, and write the object to stdout (docs/disaster-recovery.md).
    Recover {
        /// The etcd key the value was read from, e.g. /registry/secrets/NS/NAME (the value is bound to it).
        #[arg(long, value_name = "KEY")]
        etcd_key: String,
        /// Open with this SM2 private key (PEM, mode 0600) instead of a config's keys.
        #[arg(long, value_name = "KEY.pem")]
        sm2_key: Option<PathBuf>,
        /// Refuse a value of another EncryptionConfiguration provider than NAME.
        #[arg(long, value_name = "NAME")]
        provider_name: Option<String>,
    },
    /// Talk to a running plugin as kube-apiserver does (Version, Status, Encrypt/Decrypt on v1beta1 and
    /// v2), print what it answered; non-zero exit on any problem.
    Status {
        /// The plugin's socket (a path, or @name); default: GRPCSocketPath of the config.
        #[arg(long, value_name = "PATH")]
        socket: Option<String>,
    },
}

/// Largest input `encrypt`/`decrypt` read from stdin.
const MAX_STDIN: u64 = 64 * 1024 * 1024;

/// An error that the command has already reported in full (`check`'s `FAILED:` line): the binary exits
/// non-zero without printing it again.
#[derive(Debug)]
pub struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed (reported above)")
    }
}

impl std::error::Error for AlreadyReported {}

/// Runs the command line: serves, or runs a one-shot command.
pub fn run(cli: Cli) -> Result<()> {
    let settings = |default, from_config| logging::Settings {
        format: cli.log_format,
        cli_level: cli.log_level,
        default,
        from_config,
    };
    let configured = |default| -> Result<Config> {
        let config = load_config(cli.config.as_deref())?;
        logging::init(settings(default, false), Some(&config));
        Ok(config)
    };
    match &cli.command {
        Some(Command::Keygen { out, .. }) => {
            if cli.config.is_some() {
                bail!("keygen reads no config file; drop -f");
            }
            keygen(out)
        }
        None | Some(Command::Serve) => {
            // Signal handling first (DESIGN §7): a SIGHUP in the first milliseconds must not kill the
            // process before its config, keys and socket exist (cli/signals.rs).
            let rt = runtime()?;
            let start_up = signals::install(rt.handle())?;
            let config = load_config(cli.config.as_deref())?;
            logging::init(settings(LogLevel::Info, true), Some(&config));
            rt.block_on(serve(config, start_up))
        }
        Some(Command::Check) => {
            logging::init(settings(LogLevel::Off, false), None);
            runtime()?.block_on(check(cli.config.as_deref()))
        }
        Some(Command::Encrypt) => filter_stdin(configured(LogLevel::Warn)?, true),
        Some(Command::Decrypt) => filter_stdin(configured(LogLevel::Warn)?, false),
        Some(Command::Recover {
            etcd_key,
            sm2_key,
            provider_name,
        }) => {
            // stdout carries the object and stderr its one line: logs only when asked for.
            logging::init(settings(LogLevel::Off, false), None);
            recover(&cli, etcd_key, sm2_key.as_deref(), provider_name.as_deref())
        }
        Some(Command::Status { socket }) => {
            logging::init(settings(LogLevel::Off, false), None);
            status(&cli, socket.as_deref())
        }
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

/// The config of `-f`, else of [`DEFAULT_CONFIG_PATH`].
fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(Config::load(
        path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH)),
    )?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
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
    // Created 0700; one that exists must pass the rule the plugin applies to its keys' directory.
    crate::keyfile::create_private_dir(dir)
        .with_context(|| format!("cannot use {} for keys", dir.display()))?;
    let (private, public, id) = crate::provider::sm2::generate_pem()?;
    let key_path = dir.join("sm2-key.pem");
    let pub_path = dir.join("sm2-pub.pem");
    // Anything at either path, a dangling link included, stops keygen before a byte is written; the
    // exclusive, no-follow create below holds the line if something appears meanwhile.
    for p in [&key_path, &pub_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            bail!("{} exists; refusing to overwrite a key", p.display());
        }
    }
    crate::keyfile::write_secret_file(&key_path, private.as_bytes())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    // The public key lets its holder seal data keys the plugin accepts (docs/threat-model.md): 0600 too.
    if let Err(e) = crate::keyfile::write_new_file(&pub_path, public.as_bytes(), 0o600) {
        // No half key pair: the private key was created by us a moment ago, in our own directory.
        let _ = std::fs::remove_file(&key_path);
        return Err(e).with_context(|| format!("cannot write {}", pub_path.display()));
    }
    eprintln!(
        "wrote {} (private key, 0600) and {} (public key, 0600)",
        key_path.display(),
        pub_path.display()
    );
    println!("{id}");
    Ok(())
}

/// `check`: a report on stdout, one line per step, then exactly one verdict line, `OK` or `FAILED: why`
/// (the first failure); the exit code matches. Logs are off unless `--log-level` or `RUST_LOG` asks.
async fn check(path: Option<&Path>) -> Result<()> {
    let mut failures = Vec::new();
    check_steps(path, &mut failures).await;
    match failures.first() {
        None => {
            println!("OK");
            Ok(())
        }
        Some(first) => {
            let more = match failures.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more above)"),
            };
            println!("FAILED: {first}{more}");
            Err(AlreadyReported.into())
        }
    }
}

/// The steps of `check`, each printing its line; a failure is also pushed to `failures`. Nothing here
/// reaches the network before the config has passed validation (placeholders included).
async fn check_steps(path: Option<&Path>, failures: &mut Vec<String>) {
    // A config or key that does not load is the whole report: the verdict says it.
    let plugin = match load_config(path).and_then(|c| Ok(Plugin::load(c)?)) {
        Ok(p) => p,
        Err(e) => return failures.push(format!("{e:#}")),
    };
    let mut fail = |line: &str, why: String| {
        println!("{line}: FAILED: {why}");
        failures.push(why);
    };
    let shown = plugin.config().path.display().to_string();
    println!("config {shown}: ok");
    println!("self-tests (SM2, SM3, SM4, SM4-GCM known answers): ok");
    let keyring = plugin.datakeys().keyring();
    for id in keyring.ids() {
        let Some(p) = keyring.get(id) else {
            continue;
        };
        let role = if id == keyring.primary().kek_id() {
            "primary"
        } else {
            "previous"
        };
        let line = format!("key {id} ({role}, {})", p.kind());
        match p.describe().await {
            Ok(what) => println!("{line}: {what}"),
            Err(e) => fail(&line, format!("key {id}: {e}")),
        }
        if crate::provider::sm2::is_development_key(id) {
            println!(
                "key {id}: WARNING: the public development key of keys/ (anyone can open what it seals)"
            );
        }
    }
    println!(
        "legacy ciphertexts (JD Cloud plugin form): {}",
        legacy_line(&plugin)
    );
    if let Err(e) = plugin.health().probe(&plugin.datakeys()).await {
        fail("primary key wrap/unwrap round trip", e.to_string());
        // A seal/open would ask the same key the same thing again.
        println!("seal/open round trip: skipped (the primary key failed above)");
        return;
    }
    println!("primary key wrap/unwrap round trip: ok");
    let probe = b"gm-kms-plugin check";
    let sealed = match plugin.envelope().seal(probe).await {
        Ok(s) => s,
        Err(e) => return fail("seal/open round trip", format!("seal: {e}")),
    };
    match plugin.envelope().open(&sealed.ciphertext).await {
        Ok(opened) if opened.as_slice() == probe => println!(
            "seal/open round trip: ok ({} bytes of ciphertext for {} bytes, key {})",
            sealed.ciphertext.len(),
            probe.len(),
            sealed.kek_id
        ),
        Ok(_) => fail(
            "seal/open round trip",
            "open returned different bytes than were sealed".into(),
        ),
        Err(e) => fail("seal/open round trip", format!("open: {e}")),
    }
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

/// A loud line when a key of the keyring is the public development key of `keys/`.
fn warn_development_key(plugin: &Plugin) {
    let keyring = plugin.datakeys().keyring();
    for id in keyring.ids() {
        if crate::provider::sm2::is_development_key(id) {
            tracing::warn!(
                key_id = id,
                "serving with a PUBLIC development key of keys/: anyone can open what it seals; make a \
                 real key with `gm-kms-plugin keygen` (keys/README.md)"
            );
        }
    }
}

async fn serve(config: Config, start_up: signals::StartUp) -> Result<()> {
    let started = std::time::Instant::now();
    let plugin = Plugin::load(config).context("loading config and keys")?;
    let config = plugin.config();
    let socket = crate::server::bind(&config.socket)?;
    let signals = start_up.serving().await?;
    let keyring = plugin.datakeys().keyring();
    tracing::info!(
        version = crate::RUNTIME_VERSION,
        socket = %config.socket,
        primary = keyring.primary().kek_id(),
        // A list: JSON logs write it as an array (cli/logging.rs).
        keys = ?keyring.ids(),
        legacy = %legacy_line(&plugin),
        kms_v2_version = %config.kms_v2_version,
        ready_ms = started.elapsed().as_millis() as u64,
        "gm-kms-plugin serving KMS v1beta1 and v2"
    );
    warn_development_key(&plugin);
    let prober = crate::health::spawn_prober(plugin.datakeys(), plugin.health());
    // The HTTP side door (/livez /healthz /metrics): binds in the background, so a busy port never delays
    // or stops the KMS socket (DESIGN §5).
    let http = config
        .health_addr
        .map(|addr| crate::http::spawn(plugin.clone(), addr));
    let reloader = tokio::spawn(reload_on_sighup(plugin.clone(), signals.hangup));
    let result = crate::server::serve(
        plugin.backend(),
        socket,
        peer_policy(&plugin),
        signals.stop.stopped(),
    )
    .await;
    prober.abort();
    reloader.abort();
    if let Some(http) = http {
        http.abort();
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// Who may use the KMS socket: the `AllowedPeerUids` of the config in force (a reload applies to new
/// connections); refusals are counted in the plugin's metrics.
fn peer_policy(plugin: &Arc<Plugin>) -> crate::server::PeerPolicy {
    let (config, metrics) = (plugin.clone(), plugin.clone());
    crate::server::PeerPolicy {
        allows: Box::new(move |uid| config.allows_peer(uid)),
        refused: Box::new(move |why| metrics.record_connection_refused(why.label())),
    }
}

async fn reload_on_sighup(plugin: Arc<Plugin>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        let before = plugin.envelope().primary_kek_id();
        let reloaded = plugin.reload();
        if reloaded.is_ok() {
            // LogLevel / DebugMode take effect now, not at the next restart.
            logging::apply(&plugin.config());
        }
        match reloaded {
            Ok(primary) if primary != before => {
                tracing::info!(from = %before, to = %primary, "reloaded: primary key rotated")
            }
            Ok(primary) => tracing::info!(%primary, "reloaded"),
            Err(e) => tracing::error!(error = %e, "reload refused; the running config stays"),
        }
    }
}

/// `recover`: a value from etcd on stdin, the object on stdout, one line on stderr saying what it was.
fn recover(
    cli: &Cli,
    etcd_key: &str,
    sm2_key: Option<&Path>,
    provider: Option<&str>,
) -> Result<()> {
    use crate::recover::KeysOpener;
    let opener = match (sm2_key, &cli.config) {
        (Some(_), Some(_)) => bail!("recover: pass -f CONFIG or --sm2-key KEY.pem, not both"),
        (Some(key), None) => KeysOpener::from_sm2_key(key)?,
        (None, _) => KeysOpener::from_config(&load_config(cli.config.as_deref())?)?,
    };
    let value = read_stdin()?;
    let got = runtime()?.block_on(crate::recover::recover(&value, etcd_key, provider, &opener))?;
    write_stdout(&got.object)?;
    eprintln!("{}", got.summary(etcd_key));
    Ok(())
}

/// `status`: probes the socket of `--socket`, else of the config; like `check`, a line per step and one
/// verdict line on stdout, the exit code to match.
fn status(cli: &Cli, socket: Option<&str>) -> Result<()> {
    let socket = match (socket, &cli.config) {
        (Some(_), Some(_)) => bail!("status: pass -f CONFIG or --socket PATH, not both"),
        (Some(s), None) => crate::probe::parse_socket(s)?,
        (None, _) => load_config(cli.config.as_deref())?.socket,
    };
    runtime()?
        .block_on(crate::probe::run(&socket, &mut std::io::stdout()))
        .map_err(|_| AlreadyReported.into())
}
