//! `gm-kms-plugin` binary: parses the command line and hands over to [`gm_kms_plugin::run`].
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = gm_kms_plugin::Cli::parse();
    match gm_kms_plugin::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, each said once (errors of the library name their cause
            // and return no `source()`; each anyhow context adds one link). An error the command has
            // already reported (`check`'s verdict) is not said twice.
            if e.downcast_ref::<gm_kms_plugin::AlreadyReported>().is_none() {
                eprintln!("gm-kms-plugin: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
