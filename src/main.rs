//! `gm-kms-plugin` binary: parses the command line and hands over to [`gm_kms_plugin::run`].
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = gm_kms_plugin::Cli::parse();
    match gm_kms_plugin::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gm-kms-plugin: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
