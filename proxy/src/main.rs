//! The `tproxy` binary: the proxy, and `tproxy ca init|show`.

use std::process::ExitCode;

use clap::Parser;
use tproxy::config::{CaCommand, Cli, Command, Config, RulesCommand};
use tproxy::tls::ca::{CertificateAuthority, trust_instructions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // A panic is a bug: crash loudly (and get restarted) rather than keep
    // running with a dead worker thread.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let result = match cli.command {
        Some(Command::Ca(cmd)) => ca(cmd).map(|()| 0),
        Some(Command::Rules(RulesCommand::Check { file })) => tproxy::policy::check_file(&file)
            .map(|text| print!("{text}"))
            .map(|()| 0)
            .map_err(|e| format!("{}: {e}", file.display())),
        None => Config::try_from(&cli.run)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                tproxy::run::run(cfg)
                    .map(|outcome| outcome.exit_code())
                    .map_err(|e| e.to_string())
            }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            // Queued diagnostics first, so the reason is the last line.
            tproxy::diag::flush(std::time::Duration::from_millis(500));
            eprintln!("tproxy: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Never write(2) to stderr on the emitting thread (a worker): see diag.
        .with_writer(tproxy::diag::make)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn ca(cmd: CaCommand) -> Result<(), String> {
    match cmd {
        CaCommand::Init {
            confdir,
            key_type,
            force,
        } => {
            let dir = confdir.resolve();
            let ca = CertificateAuthority::create(&dir, key_type.into(), force)
                .map_err(|e| e.to_string())?;
            println!("{}", ca.describe());
            println!("{}", trust_instructions(&dir));
            Ok(())
        }
        CaCommand::Show { confdir, pem } => {
            let dir = confdir.resolve();
            let ca = CertificateAuthority::load(&dir).map_err(|e| {
                format!(
                    "{e}\n(no CA yet? create one with `tproxy ca init --confdir {}`)",
                    dir.display()
                )
            })?;
            if pem {
                print!("{}", ca.cert_pem());
            } else {
                println!("{}", ca.describe());
            }
            Ok(())
        }
    }
}
