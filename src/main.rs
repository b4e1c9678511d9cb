//! The `iscamd` command line: flags in, library calls, results out.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose, args.is_daemon());
    // Read where each model is loaded; refused here, once, with the variable's name.
    use iscamd::model::kernels::{InFlight, Matmul, Policy};
    let checked = Policy::from_env()
        .and(Matmul::from_env())
        .and(InFlight::from_env());
    if let Err(e) = checked {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", iscamd::error::with_causes(e.as_ref()));
            ExitCode::from(2)
        }
    }
}
