//! `authstamp`: see `authstamp --help`. Everything lives in the library.

use clap::Parser as _;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = authstamp_token_service::cli::Cli::parse();
    match authstamp_token_service::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("authstamp: {err:#}");
            ExitCode::FAILURE
        }
    }
}
