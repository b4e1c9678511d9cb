//! The `iscamd` command line: flags in, library calls, results out.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose, args.is_daemon());
    // Read once, where the first model is loaded; refused here, with the variable's name.
    if let Err(e) = iscamd::model::kernels::EnvSettings::get() {
        eprintln!("error: {}", iscamd::error::with_causes(e));
        return ExitCode::from(2);
    }
    // Before any command reaches tract's kernels (the library's entry points do it too).
    iscamd::model::kernels::leave_out_amx();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", iscamd::error::with_causes(e.as_ref()));
            ExitCode::from(2)
        }
    }
}
