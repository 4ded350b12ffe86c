//! `serve`'s signal handling, installed before anything else (DESIGN §7): before the config is read, keys
//! load and the socket is bound. Until then a `SIGHUP` would have killed the process (its default action),
//! so a reload sent in the first milliseconds — by a config manager, or a terminal closing — took the KMS
//! plugin down with it.
//!
//! - `SIGHUP` during start-up waits: the reload runs once the plugin serves (it re-reads the same config).
//! - `SIGTERM`/`SIGINT` during start-up end the process at once with exit code 0: nothing is served yet,
//!   so there is no call to finish, and a stuck start (a cipher machine that does not answer) must still
//!   stop when asked. Once serving, they stop it gracefully ([`Stop::stopped`]).

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The process's signal streams, once start-up is over.
pub(super) struct Signals {
    /// `SIGHUP`: reload.
    pub(super) hangup: Signal,
    /// `SIGTERM` and `SIGINT`: stop.
    pub(super) stop: Stop,
}

/// `SIGTERM` and `SIGINT`.
pub(super) struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    /// Resolves at the first `SIGTERM` or `SIGINT`, saying which in the log.
    pub(super) async fn stopped(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// The signal handlers while the plugin starts; [`StartUp::serving`] hands them over.
pub(super) struct StartUp {
    watcher: JoinHandle<(Signal, Signal, Signal)>,
    serving: oneshot::Sender<()>,
}

/// Installs the handlers for `SIGHUP`, `SIGTERM` and `SIGINT` (the first thing `serve` does), and watches
/// for a stop signal until start-up is over.
pub(super) fn install(rt: &tokio::runtime::Handle) -> Result<StartUp> {
    let _context = rt.enter();
    let hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let (serving, started) = oneshot::channel::<()>();
    let watcher = rt.spawn(async move {
        let stop = tokio::select! {
            biased;
            _ = started => None,
            _ = term.recv() => Some("SIGTERM"),
            _ = int.recv() => Some("SIGINT"),
        };
        if let Some(name) = stop {
            // Logging may not be set up yet: say it on stderr, where the logs go. A socket bound in this
            // very instant stays behind as a stale file, which the next start reclaims.
            eprintln!("gm-kms-plugin: {name} during start-up; exiting");
            std::process::exit(0);
        }
        // A SIGHUP that came meanwhile stays pending in `hangup`: the reload runs once serving.
        (hangup, term, int)
    });
    Ok(StartUp { watcher, serving })
}

impl StartUp {
    /// Start-up is over (the socket is bound): stop signals now stop the server gracefully.
    pub(super) async fn serving(self) -> Result<Signals> {
        let _ = self.serving.send(());
        let (hangup, term, int) = self
            .watcher
            .await
            .context("the signal watcher ended unexpectedly")?;
        Ok(Signals {
            hangup,
            stop: Stop { term, int },
        })
    }
}
