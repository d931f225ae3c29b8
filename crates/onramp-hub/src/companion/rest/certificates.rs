//! Trusted CA certificates: uploaded, listed and removed by name.

use super::*;

// Trusted CA certificates: an Onramp extension (IoT Hub manages them through
// Azure Resource Manager). Devices with `certificateAuthority` authentication
// must chain to one of them.

#[derive(Deserialize)]
pub(super) struct CertificateUpload {
    certificate: String,
}

pub(super) fn certificate_view(name: &str, der: &[u8]) -> Value {
    match onramp_core::x509::info_from_der(der) {
        Ok(info) => {
            json!({"name": name, "subject": info.subject_name, "thumbprint": info.sha256_thumbprint, "expiry": info.not_after_utc})
        }
        Err(_) => json!({"name": name}),
    }
}

pub(super) async fn list_certificates(call: Call) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_READ)?;
    let certs = hub
        .store()
        .certificates()
        .await
        .map_err(HubStoreError::from)?;
    Ok(ok_json(
        json!({"value": certs.iter().map(|(n, d)| certificate_view(n, d)).collect::<Vec<_>>()}),
    ))
}

pub(super) async fn put_certificate(
    call: Call,
    Path(name): Path<String>,
    body: Bytes,
) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_WRITE)?;
    let upload: CertificateUpload = parse(&body)?;
    let bad = |m: String| HubFailure::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", m);
    let der = onramp_core::x509::decode(&upload.certificate)
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let parsed =
        onramp_core::x509::Parsed::from_der(&der).map_err(|e| bad(format!("certificate: {e}")))?;
    if !parsed.is_ca {
        return Err(bad(format!(
            "{} is not a CA certificate",
            parsed.info.subject_name
        )));
    }
    hub.trust_ca(&name, der.clone())
        .await
        .map_err(HubStoreError::from)?;
    Ok(ok_json(certificate_view(&name, &der)))
}

pub(super) async fn delete_certificate(call: Call, Path(name): Path<String>) -> HubResult {
    let hub = call.allow(HubRights::REGISTRY_WRITE)?;
    if !hub.untrust_ca(&name).await.map_err(HubStoreError::from)? {
        return Err(HubFailure::new(
            StatusCode::NOT_FOUND,
            "CertificateNotFound",
            format!("no certificate named '{name}'"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
