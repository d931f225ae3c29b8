//! `onramp cert`: the development PKI and proof-of-possession helpers.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::*;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Upload a CA certificate (PEM) to the provisioning service.
    Upload {
        #[command(flatten)]
        api: ServiceApi,
        /// The CA certificate's name in the provisioning service.
        name: String,
        /// The certificate, PEM.
        #[arg(long)]
        file: PathBuf,
        /// Mark it verified without a proof of possession.
        #[arg(long)]
        verified: bool,
    },
    /// Get the code a verification certificate must carry as its CN.
    VerificationCode {
        #[command(flatten)]
        api: ServiceApi,
        /// The CA certificate's name in the provisioning service.
        name: String,
    },
    /// Prove possession: upload a certificate signed by the CA whose CN is the code.
    Verify {
        #[command(flatten)]
        api: ServiceApi,
        /// The CA certificate's name in the provisioning service.
        name: String,
        /// The certificate, PEM.
        #[arg(long)]
        file: PathBuf,
    },
    /// List the CA certificates.
    List(ServiceApi),
    /// Show one CA certificate: subject, thumbprint, expiry, whether verified.
    Show {
        #[command(flatten)]
        api: ServiceApi,
        /// The CA certificate's name in the provisioning service.
        name: String,
    },
    /// Delete a CA certificate.
    Delete {
        #[command(flatten)]
        api: ServiceApi,
        /// The CA certificate's name in the provisioning service.
        name: String,
    },
    /// FOR TESTING: create a root CA (writes OUT.pem and OUT.key.pem).
    CreateRoot {
        #[command(flatten)]
        new: NewCertificate,
    },
    /// FOR TESTING: create an intermediate CA signed by ISSUER (ISSUER.pem, ISSUER.key.pem).
    CreateIntermediate {
        /// The issuing CA: the OUT it was written to (OUT.pem and OUT.key.pem).
        #[arg(long)]
        issuer: PathBuf,
        #[command(flatten)]
        new: NewCertificate,
    },
    /// FOR TESTING: create a device certificate signed by ISSUER, or self-signed.
    /// Writes OUT.pem, OUT.key.pem and OUT.chain.pem (the certificate and the
    /// intermediates a device sends).
    CreateDevice {
        /// The issuing CA: the OUT it was written to (OUT.pem and OUT.key.pem).
        #[arg(long, required_unless_present = "self_signed")]
        issuer: Option<PathBuf>,
        /// A self-signed device certificate, with no issuer.
        #[arg(long, conflicts_with = "issuer")]
        self_signed: bool,
        #[command(flatten)]
        new: NewCertificate,
    },
}

/// What every `create-*` command issues: its subject, where it goes and for how long.
#[derive(Args, Debug)]
pub struct NewCertificate {
    /// The certificate's common name (CN); a device certificate's is its registration ID.
    #[arg(long)]
    pub cn: String,
    /// Where to write it: OUT.pem, OUT.key.pem (and OUT.chain.pem below a CA).
    #[arg(long)]
    pub out: PathBuf,
    /// How many days it is valid.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
    /// Replace files that exist at OUT (their key is lost).
    #[arg(long)]
    pub force: bool,
}
