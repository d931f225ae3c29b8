//! Pending TPM challenges: a JSON document per registration ID, with the
//! challenge key sealed beside it (never in the document).

use onramp_core::ports::{StoreError, TpmChallenge};
use onramp_model::Secret;
use rusqlite::Connection;

use super::rows::{corrupt, ensure_service, get_row, list_rows, new_etag, upsert};
use crate::seal::Sealer;

pub(super) const TPM_CHALLENGES: &str = "tpm_challenges";

/// What a challenge's sealed key is bound to.
fn aad(service: &str, key: &str) -> String {
    format!("tpm-challenge:{service}/{key}")
}

pub(crate) fn open(
    sealer: &Sealer,
    service: &str,
    key: &str,
    doc: &str,
    sealed: Option<Vec<u8>>,
) -> Result<TpmChallenge, StoreError> {
    let aad = aad(service, key);
    let mut challenge: TpmChallenge = serde_json::from_str(doc).map_err(|e| corrupt(&aad, e))?;
    let sealed = sealed.ok_or_else(|| corrupt(&aad, "the sealed key is missing"))?;
    let key = sealer.open(&sealed, &aad).map_err(|e| corrupt(&aad, e))?;
    let key = String::from_utf8(key).map_err(|e| corrupt(&aad, e))?;
    challenge.key = Secret::new(key);
    Ok(challenge)
}

pub(super) fn read_one(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    key: &str,
) -> Result<Option<TpmChallenge>, StoreError> {
    let row = get_row(conn, TPM_CHALLENGES, service, key)?;
    row.map(|(doc, sealed)| open(sealer, service, key, &doc, sealed))
        .transpose()
}

pub(super) fn read_page(
    conn: &Connection,
    sealer: &Sealer,
    service: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<TpmChallenge>, StoreError> {
    list_rows(conn, TPM_CHALLENGES, service, after, limit)?
        .into_iter()
        .map(|(key, doc, sealed)| open(sealer, service, &key, &doc, sealed))
        .collect()
}

/// A challenge ready to write: its document without the key, the key sealed.
pub(crate) struct ChallengeWrite {
    pub(crate) key: String,
    pub(crate) doc: String,
    pub(crate) sealed: Vec<u8>,
    pub(crate) challenge: TpmChallenge,
}

impl ChallengeWrite {
    pub(crate) fn seal(
        sealer: &Sealer,
        service: &str,
        challenge: TpmChallenge,
    ) -> Result<Self, StoreError> {
        let key = challenge.registration_id.to_ascii_lowercase();
        let aad = aad(service, &key);
        let sealed = sealer.seal(challenge.key.expose().as_bytes(), &aad);
        let mut doc_form = challenge.clone();
        doc_form.key = Secret::new("");
        let doc = serde_json::to_string(&doc_form).map_err(|e| corrupt(&aad, e))?;
        Ok(Self {
            key,
            doc,
            sealed,
            challenge,
        })
    }

    pub(super) fn registration_id(&self) -> &str {
        &self.challenge.registration_id
    }

    /// Writes it, replacing any earlier challenge of the device.
    pub(super) fn apply(
        self,
        conn: &Connection,
        service: &str,
    ) -> Result<TpmChallenge, StoreError> {
        ensure_service(conn, service)?;
        let etag = new_etag();
        upsert(
            conn,
            TPM_CHALLENGES,
            service,
            &self.key,
            etag.as_str(),
            &self.doc,
            Some(&self.sealed),
        )?;
        Ok(self.challenge)
    }
}
