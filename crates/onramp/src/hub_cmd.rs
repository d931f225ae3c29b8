//! `onramp hub serve`: a companion hub on its own.

use std::sync::Arc;

use anyhow::Context;
use onramp_hub::CompanionHub;
use onramp_store::Sealer;

use crate::cli::{HubCommand, HubServeArgs};
use crate::local::authority;

pub async fn run(command: HubCommand) -> anyhow::Result<()> {
    match command {
        HubCommand::Serve(args) => serve(args).await,
    }
}

async fn serve(args: HubServeArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ONRAMP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    let host = authority(&args.host, port);
    let mut names = onramp_net::pki::default_host_names();
    if !names.iter().any(|n| n.eq_ignore_ascii_case(&args.host)) {
        names.insert(0, args.host.clone());
    }
    let pki = onramp_net::pki::load_or_create(&args.data_dir.join("tls"), &names)?;
    let tls = onramp_net::tls::server_config(
        &pki.server_chain_pem,
        &pki.server_key_pem,
        &[b"h2", b"http/1.1"],
    )?;
    let sealer = Arc::new(Sealer::load_or_create(&args.data_dir.join("keys"))?);
    let hub = CompanionHub::open(&args.data_dir.join("hub.db"), &host, sealer).await?;
    println!(
        "Onramp companion hub {host} is running (listening on {}).",
        listener.local_addr()?
    );
    println!("  Connection string  {}", hub.owner_connection_string());
    println!("  CA certificate     {}", pki.ca_cert_path.display());
    println!("  Link it:           onramp linked-hub add --connection-string '<the string above>'");
    onramp_net::serve_https(
        listener,
        Arc::new(tls),
        hub.router(),
        Default::default(),
        crate::serve::shutdown_signal(),
    )
    .await;
    Ok(())
}
