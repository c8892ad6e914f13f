//! `authstamp`: see `authstamp --help`. Everything lives in the library.

use clap::Parser as _;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = authstamp_token_service::cli::Cli::parse();
    match authstamp_token_service::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`authstamp providers list | head`):
        // what it read is all it wanted, as with any Unix tool.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("authstamp: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
