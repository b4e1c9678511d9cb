//! The `iscamd` command line: flags in, library calls, results out.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread starts: it may set one of tract's environment knobs.
    let kernels = iscamd::model::kernels::tune();
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose, args.is_daemon());
    tracing::debug!("tract kernels: {kernels}");
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "error: {}",
                e.chain()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(": ")
            );
            ExitCode::from(2)
        }
    }
}
