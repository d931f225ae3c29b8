//! CA certificates of a service, and the proof of possession that verifies
//! them.

use super::*;

impl Admin {
    /// Uploads (or replaces) a CA certificate. A new or changed certificate
    /// starts unverified unless `isVerified` says otherwise.
    pub async fn put_ca_certificate(
        &self,
        service: &str,
        upload: Write<'_, CertificateBody>,
    ) -> Result<CertificateResponse, ProvisioningError> {
        check_certificate_name(upload.id)?;
        let Write {
            id: name,
            body,
            if_match,
        } = upload;
        let (der, parsed) = certificate_of(&body)?;
        if !parsed.is_ca {
            return Err(ProvisioningError::invalid(format!(
                "certificate {} is not a CA certificate (basicConstraints CA:TRUE); upload the root or intermediate                  that signs device certificates",
                parsed.info.subject_name
            )));
        }
        let now = self.clock.now();
        let existing = self
            .store
            .get::<CaCertificate>(service, &IdKey::of(name))
            .await?;
        let same = existing.as_ref().is_some_and(|e| e.der == der);
        let ca = CaCertificate {
            name: existing
                .as_ref()
                .map(|e| e.name.clone())
                .unwrap_or_else(|| name.to_owned()),
            subject: parsed.info.subject_name.clone(),
            thumbprint: parsed.info.sha1_thumbprint.clone(),
            sha256_thumbprint: parsed.info.sha256_thumbprint.clone(),
            not_after: parsed.info.not_after_utc,
            is_verified: body
                .is_verified
                .unwrap_or(same && existing.as_ref().is_some_and(|e| e.is_verified)),
            verification_code: if same {
                existing.as_ref().and_then(|e| e.verification_code.clone())
            } else {
                None
            },
            etag: None,
            created: existing.as_ref().map(|e| e.created).unwrap_or(now),
            updated: now,
            der,
        };
        let stored = self
            .store
            .put(service, ca, Precondition::from_if_match(if_match), now)
            .await
            .map_err(|e| record_error::<CaCertificate>(e, name))?;
        Ok(certificate_response(service, &stored))
    }

    pub async fn ca_certificate(
        &self,
        service: &str,
        name: &str,
    ) -> Result<CertificateResponse, ProvisioningError> {
        let ca = self.existing::<CaCertificate>(service, name).await?;
        Ok(certificate_response(service, &ca))
    }

    pub async fn ca_certificates(
        &self,
        service: &str,
    ) -> Result<CertificateList, ProvisioningError> {
        let list = self.store.ca_certificates(service).await?;
        Ok(CertificateList {
            value: list
                .iter()
                .map(|c| certificate_response(service, c))
                .collect(),
        })
    }

    /// Issues the code a verification certificate must carry as its CN.
    pub async fn generate_verification_code(
        &self,
        service: &str,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<CertificateResponse, ProvisioningError> {
        let mut ca = self.existing::<CaCertificate>(service, name).await?;
        let code: String = crate::keys::random_bytes(16)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        ca.verification_code = Some(code.clone());
        ca.updated = self.clock.now();
        let stored = self.write_ca(service, ca, if_match).await?;
        let mut response = certificate_response(service, &stored);
        response.properties.verification_code = Some(code);
        Ok(response)
    }

    /// Proof of possession: a certificate whose CN is the verification code,
    /// signed with the CA's private key, marks the CA verified.
    pub async fn verify_ca_certificate(
        &self,
        service: &str,
        proof: Write<'_, CertificateBody>,
    ) -> Result<CertificateResponse, ProvisioningError> {
        let mut ca = self.existing::<CaCertificate>(service, proof.id).await?;
        let Write {
            id: name,
            body,
            if_match,
        } = proof;
        let failed = |m: String| ProvisioningError::new(ErrorCode::VerificationFailed, m);
        let Some(code) = ca.verification_code.clone() else {
            return Err(failed(format!(
                "CA certificate '{name}' has no verification code yet; generate one first (generateVerificationCode)"
            )));
        };
        let (der, parsed) = certificate_of(&body)?;
        if !parsed
            .common_name
            .as_deref()
            .is_some_and(|cn| cn.eq_ignore_ascii_case(&code))
        {
            return Err(failed(format!(
                "the verification certificate's CN is '{}', not the verification code '{code}'",
                parsed.common_name.as_deref().unwrap_or("")
            )));
        }
        if !x509::is_signed_by(&der, &ca.der) {
            return Err(failed(format!(
                "the verification certificate is not signed by CA certificate '{name}' ({}); sign it with that CA's key",
                ca.subject
            )));
        }
        parsed
            .validity_at(self.clock.now())
            .map_err(|e| failed(format!("the verification certificate: {e}")))?;
        ca.is_verified = true;
        ca.verification_code = None;
        ca.updated = self.clock.now();
        let stored = self.write_ca(service, ca, if_match).await?;
        Ok(certificate_response(service, &stored))
    }

    /// Writes back a CA certificate just read: without If-Match, only if no
    /// one changed it in between.
    async fn write_ca(
        &self,
        service: &str,
        ca: CaCertificate,
        if_match: Option<&str>,
    ) -> Result<CaCertificate, ProvisioningError> {
        let condition = Precondition::from_if_match(if_match).or_as_read(ca.etag.as_ref());
        let name = ca.name.clone();
        let written = self
            .store
            .put(service, ca, condition, self.clock.now())
            .await;
        written.map_err(|e| record_error::<CaCertificate>(e, &name))
    }
}

fn check_certificate_name(name: &str) -> Result<(), ProvisioningError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(ProvisioningError::invalid(format!(
            "certificate name '{name}' must be 1 to 64 letters, digits, '-', '.' or '_'"
        )));
    }
    Ok(())
}

/// The ARM-style resource Azure returns for a CA certificate.
fn certificate_response(service: &str, ca: &CaCertificate) -> CertificateResponse {
    use base64::Engine as _;
    CertificateResponse {
        properties: CertificateProperties {
            subject: ca.subject.clone(),
            expiry: ca.not_after.to_http_date(),
            thumbprint: ca.thumbprint.clone(),
            is_verified: ca.is_verified,
            certificate: base64::engine::general_purpose::STANDARD.encode(&ca.der),
            created: ca.created.to_http_date(),
            updated: ca.updated.to_http_date(),
            verification_code: None,
        },
        id: format!("/provisioningServices/{service}/certificates/{}", ca.name),
        name: ca.name.clone(),
        kind: "Microsoft.Devices/ProvisioningServices/Certificates".into(),
        etag: ca
            .etag
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
    }
}

/// The certificate of an upload or a proof: its DER and what it says.
fn certificate_of(body: &CertificateBody) -> Result<(Vec<u8>, x509::Parsed), ProvisioningError> {
    let invalid =
        |e: x509::CertificateError| ProvisioningError::invalid(format!("certificate: {e}"));
    let der = x509::decode(&body.certificate).map_err(invalid)?;
    let parsed = x509::Parsed::from_der(&der).map_err(invalid)?;
    Ok((der, parsed))
}
