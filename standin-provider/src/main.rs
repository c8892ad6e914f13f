//! `authstamp-standin`: see the library crate.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = authstamp_standin_provider::Cli::parse();
    authstamp_standin_provider::init_tracing();
    authstamp_standin_provider::serve(cli).await
}
