//! `tproxy-sidecar` binary: parse flags/env, lock egress, exit 0; exit 1 with the reason otherwise.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use tproxy_sidecar::apply;
use tproxy_sidecar::bundle::BundleSpec;
use tproxy_sidecar::cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: `kubectl logs` shows escape codes verbatim.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Validated before anything is applied: a bad CA setting changes nothing.
    let bundle = match BundleSpec::from_args(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tproxy-sidecar: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match apply::run(&args) {
        Ok(outcome) => {
            if let Some(bundle) = bundle {
                if args.dry_run {
                    tracing::info!(dir = %bundle.dir.display(), "dry run: CA bundle not written");
                } else {
                    match bundle.write() {
                        Ok(path) => tracing::info!(path = %path.display(), "CA bundle written"),
                        Err(e) => {
                            eprintln!("tproxy-sidecar: error: egress locked, but {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
            }
            if args.dry_run {
                let mut out = std::io::stdout().lock();
                if out.write_all(outcome.dry_run_text.as_bytes()).is_err() {
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Printed plainly (not only logged) so `kubectl logs` of the failed init
            // container shows the reason on its last line.
            eprintln!("tproxy-sidecar: error: {e}");
            ExitCode::FAILURE
        }
    }
}
