//! `onramp cert …`: CA certificates of a provisioning service (upload,
//! proof of possession, list, delete) through the service API, and a test PKI
//! for people who try X.509 attestation.

use std::path::{Path, PathBuf};

use anyhow::Context;
use onramp_net::pki::dev_certs::{Issued, Validity};
use reqwest::Method;
use serde_json::json;

use crate::cli::{CertCommand, NewCertificate};
use crate::output::{Column, Format, Output};
use crate::service_client::{Api, enc};

/// What `--output table` shows of CA certificates.
const CERTIFICATE_COLUMNS: &[Column] = &[
    ("NAME", "/name"),
    ("SUBJECT", "/properties/subject"),
    ("VERIFIED", "/properties/isVerified"),
    ("EXPIRES", "/properties/expiry"),
    ("THUMBPRINT", "/properties/thumbprint"),
];

pub async fn run(command: CertCommand, output: Output) -> anyhow::Result<()> {
    let format = output.or(Format::Json);
    let print = |value: &serde_json::Value| format.one(value);
    match command {
        CertCommand::Upload {
            api,
            name,
            file,
            verified,
        } => {
            let api = Api::open(&api).await?;
            let pem = read(&file)?;
            let body = json!({"certificate": pem, "isVerified": verified});
            print(
                &api.call(Method::PUT, &certificate(&name, ""), Some(&body))
                    .await?,
            )
        }
        CertCommand::VerificationCode { api, name } => {
            let api = Api::open(&api).await?;
            let resp = api
                .call(
                    Method::POST,
                    &certificate(&name, "/generateVerificationCode"),
                    None,
                )
                .await?;
            let code = resp["properties"]["verificationCode"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            print(&resp)?;
            eprintln!(
                "Sign a certificate whose CN is {code} with the CA's key (for example: onramp cert create-device \
                 --issuer <ca> --cn {code} --out verification), then: onramp cert verify {name} --file verification.pem"
            );
            Ok(())
        }
        CertCommand::Verify { api, name, file } => {
            let api = Api::open(&api).await?;
            let body = json!({"certificate": read(&file)?});
            print(
                &api.call(Method::POST, &certificate(&name, "/verify"), Some(&body))
                    .await?,
            )
        }
        CertCommand::List(api) => {
            let api = Api::open(&api).await?;
            let list = api.call(Method::GET, "certificates", None).await?;
            let certificates = list["value"].as_array().cloned().unwrap_or_default();
            format.records(&certificates, CERTIFICATE_COLUMNS)
        }
        CertCommand::Show { api, name } => {
            let api = Api::open(&api).await?;
            print(&api.call(Method::GET, &certificate(&name, ""), None).await?)
        }
        CertCommand::Delete { api, name } => {
            let api = Api::open(&api).await?;
            api.call(Method::DELETE, &certificate(&name, ""), None)
                .await?;
            eprintln!("deleted CA certificate {name}");
            Ok(())
        }
        CertCommand::CreateRoot { new } => {
            refuse_to_overwrite(&new)?;
            let root =
                Issued::root(&new.cn, Validity::days(new.days)).context("creating the root")?;
            write(&new.out, &root, None)
        }
        CertCommand::CreateIntermediate { issuer, new } => {
            refuse_to_overwrite(&new)?;
            let parent = load(&issuer)?;
            let ica = parent
                .intermediate(&new.cn, Validity::days(new.days))
                .context("creating the intermediate")?;
            // The chain a device under it sends: this intermediate, then the issuer's intermediates.
            write(
                &new.out,
                &ica,
                Some(&format!("{}{}", ica.cert_pem, chain_of(&issuer))),
            )
        }
        CertCommand::CreateDevice {
            issuer,
            self_signed,
            new,
        } => {
            refuse_to_overwrite(&new)?;
            let device = match (&issuer, self_signed) {
                (_, true) => Issued::self_signed_device(&new.cn, Validity::days(new.days))
                    .context("creating the certificate")?,
                (Some(issuer), false) => load(issuer)?
                    .device(&new.cn, Validity::days(new.days))
                    .context("creating the certificate")?,
                (None, false) => anyhow::bail!("give --issuer or --self-signed"),
            };
            let chain = format!(
                "{}{}",
                device.cert_pem,
                issuer.as_deref().map(chain_of).unwrap_or_default()
            );
            write(&new.out, &device, Some(&chain))
        }
    }
}

/// The service API path of the CA certificate `name`, then `action` (`/verify`, …).
fn certificate(name: &str, action: &str) -> String {
    format!("certificates/{}{action}", enc(name))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn with_suffix(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A CA written by this command: OUT.pem and OUT.key.pem.
fn load(prefix: &Path) -> anyhow::Result<Issued> {
    let cert = read(&with_suffix(prefix, ".pem"))?;
    let key = read(&with_suffix(prefix, ".key.pem"))?;
    Issued::from_pem(&cert, &key).with_context(|| {
        format!(
            "{} is not a CA this command can issue from",
            prefix.display()
        )
    })
}

/// The intermediates a certificate issued by `prefix` travels with.
fn chain_of(prefix: &Path) -> String {
    std::fs::read_to_string(with_suffix(prefix, ".chain.pem")).unwrap_or_default()
}

/// The files a create command writes at `out`.
const OUTPUTS: [&str; 3] = [".pem", ".key.pem", ".chain.pem"];

/// A key once overwritten is gone, and with it every certificate it signed.
fn refuse_to_overwrite(new: &NewCertificate) -> anyhow::Result<()> {
    let existing: Vec<String> = OUTPUTS
        .iter()
        .map(|s| with_suffix(&new.out, s))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !new.force && !existing.is_empty() {
        anyhow::bail!(
            "{} already exist{}: choose another --out, or add --force to replace {} (the key there is lost)",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" },
            if existing.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

fn write(out: &Path, issued: &Issued, chain: Option<&str>) -> anyhow::Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let path = |suffix| with_suffix(out, suffix);
    std::fs::write(path(".pem"), &issued.cert_pem)?;
    // Only the owner may read a private key.
    onramp_files::write(&path(".key.pem"), issued.key_pem.as_bytes())
        .with_context(|| format!("writing {}", path(".key.pem").display()))?;
    match chain {
        Some(chain) => std::fs::write(path(".chain.pem"), chain)?,
        // A chain left by what --force replaced would describe another certificate.
        None => {
            let _ = std::fs::remove_file(path(".chain.pem"));
        }
    }
    let info = onramp_core::x509::info(&issued.cert_pem).map_err(anyhow::Error::msg)?;
    eprintln!(
        "FOR TESTING ONLY: wrote {}.pem (SHA-256 {})",
        out.display(),
        info.sha256_thumbprint
    );
    Ok(())
}
