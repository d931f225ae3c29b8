//! `onramp`: the provisioning service, its companion hub, admin commands and
//! a device simulator, in one binary.
#![forbid(unsafe_code)]

mod admin;
mod bench;
mod cert;
mod cli;
mod config;
mod demo;
mod device;
mod hub_cmd;
mod keys_cmd;
mod limits_cmd;
mod local;
mod logging;
mod output;
mod progress;
mod serve;
mod service_client;
mod simulator;
mod store_cmd;
mod tls_reload;

use clap::Parser;

use cli::{Cli, Command};

// Registrations allocate many small, short-lived buffers (JSON, TLS records,
// HTTP heads) across threads; mimalloc serves them with less contention and
// fewer instructions than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One process-wide TLS provider: every configuration here uses aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = output::Output(cli.output);
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Hub { command } => hub_cmd::run(command, output).await,
        Command::Service { command } => admin::service(command, output).await,
        Command::LinkedHub { command } => admin::linked_hub(command, output).await,
        Command::Policy { command } => admin::policy(command, output).await,
        Command::Enrollment { command } => service_client::enrollment(command, output).await,
        Command::Group { command } => service_client::group(command, output).await,
        Command::Registration { command } => service_client::registration(command, output).await,
        Command::Diagnostics(args) => service_client::diagnostics(args, output).await,
        Command::Device { command } => device::run(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Cert { command } => cert::run(command, output).await,
        Command::Store { command } => store_cmd::run(command),
        Command::Limits { location, json } => {
            limits_cmd::run(&location, output.or_json(json)).await
        }
        Command::Keys { command } => keys_cmd::run(command, output).await,
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli, "onramp", &mut script);
            output::write_stdout(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
            output::write_stdout(&page)
        }
    }
}
