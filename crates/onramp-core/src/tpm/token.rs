//! A TPM device's proof: a SharedAccessSignature signed inside its TPM with
//! the key the activation blob delivered. The token is the one symmetric-key
//! devices send (same spellings, same string to sign), so this is SAS
//! verification with a key held by the server instead of an enrollment.

use crate::sas::{self, SasError};

use super::TpmError;

/// Checks `token` for `resource` (`{idScope}/registrations/{registrationId}`,
/// or a hub's `{host}/devices/{deviceId}`) against `key`, the raw key the
/// server wrapped for the device's TPM.
pub fn verify_token(
    token: &str,
    resource: &str,
    key: &[u8],
    now_unix: i64,
    skew_seconds: i64,
) -> Result<(), TpmError> {
    let token = sas::parse(token)?;
    if !token.resource_is(resource) {
        return Err(SasError::WrongResource {
            actual: token.resource.clone(),
            expected: resource.to_owned(),
        }
        .into());
    }
    token.check_expiry(now_unix, skew_seconds)?;
    if !token.is_signed_with(key) {
        return Err(TpmError::WrongKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};

    use super::*;

    const RESOURCE: &str = "0ne00TPM001/registrations/tpm-device";

    #[test]
    fn a_token_signed_with_the_key_passes_and_others_are_refused() {
        let key = [9u8; 32];
        let token =
            sas::sign(RESOURCE, &STANDARD.encode(key), 2_000, Some("registration")).expect("signs");
        assert_eq!(verify_token(&token, RESOURCE, &key, 1_000, 300), Ok(()));
        assert_eq!(
            verify_token(&token, RESOURCE, &[8u8; 32], 1_000, 300),
            Err(TpmError::WrongKey)
        );
        assert!(matches!(
            verify_token(&token, "0ne00TPM001/registrations/other", &key, 1_000, 300),
            Err(TpmError::Token(SasError::WrongResource { .. }))
        ));
        assert!(matches!(
            verify_token(&token, RESOURCE, &key, 2_301, 300),
            Err(TpmError::Token(SasError::Expired { .. }))
        ));
        assert!(matches!(
            verify_token("not a token", RESOURCE, &key, 1_000, 300),
            Err(TpmError::Token(SasError::Malformed(_)))
        ));
    }
}
