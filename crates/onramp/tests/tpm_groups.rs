//! TPM enrollment groups (Onramp's extension; Azure has no TPM groups)
//! against the real binary over HTTPS: a group made with `onramp group
//! create --tpm-ca`, a TPM in swtpm whose EK certificate a test
//! manufacturer issued, the nonce challenge opened and the token signed by
//! tpm2-tools, the registration recorded under the group; and each refusal
//! with its Azure error code. Then the device simulator against a group.
//!
//! Needs swtpm and tpm2-tools (scripts/test installs them); skipped without
//! them unless ONRAMP_REQUIRE_INTEROP is set.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::{Server, unix_now};
use onramp_core::tpm::RsaPublic;
use onramp_testkit::ek_cert::ManufacturerCa;
use onramp_testkit::swtpm::{self, Swtpm};
use reqwest::Method;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

const API: &str = "?api-version=2021-10-01";

/// A TPM in swtpm with its keys, as the device sends them.
struct Device {
    tpm: Swtpm,
    ek: RsaPublic,
    srk: RsaPublic,
}

impl Device {
    fn start() -> Option<Self> {
        if !swtpm::tools_installed() {
            return None;
        }
        let tpm = Swtpm::start();
        let (ek, srk) = tpm.make_keys();
        Some(Self { tpm, ek, srk })
    }

    /// A registration of this TPM with `server` as `registration_id`,
    /// presenting `certificate` as its EK certificate when given.
    fn registration<'a>(
        &'a self,
        server: &'a Server,
        registration_id: &'a str,
        certificate: Option<&'a str>,
    ) -> Registration<'a> {
        Registration {
            device: self,
            server,
            registration_id,
            certificate,
        }
    }
}

/// One device registering: the TPM, the server, and what it presents.
struct Registration<'a> {
    device: &'a Device,
    server: &'a Server,
    registration_id: &'a str,
    certificate: Option<&'a str>,
}

impl Registration<'_> {
    /// The register body: the keys, and the EK certificate when given.
    fn body(&self) -> Vec<u8> {
        let mut tpm = json!({
            "endorsementKey": self.device.ek.to_base64(),
            "storageRootKey": self.device.srk.to_base64(),
        });
        if let Some(c) = self.certificate {
            tpm["endorsementKeyCertificate"] = json!(c);
        }
        json!({"registrationId": self.registration_id, "tpm": tpm})
            .to_string()
            .into_bytes()
    }

    /// A register request with the keys (and certificate), signed with
    /// `token` when given: its status and body.
    async fn register(&self, token: Option<&str>) -> (u16, Value) {
        let (status, _, body) = self
            .server
            .register_raw(
                &self.server.id_scope(),
                self.registration_id,
                API,
                token,
                self.body(),
            )
            .await;
        (status, body)
    }

    /// The first request, keys (and certificate) without a token: the
    /// challenge's status, error code and body.
    async fn ask(&self) -> (u16, Value) {
        self.register(None).await
    }

    /// The challenge answered: the blob opened in the TPM and the retry
    /// signed with the key it carried; the retry's status and body.
    async fn answer(&self, challenge: &Value) -> (u16, Value) {
        let (server, registration_id) = (self.server, self.registration_id);
        let blob = STANDARD
            .decode(challenge["authenticationKey"].as_str().unwrap())
            .unwrap();
        self.device.tpm.import(&blob).unwrap();
        let resource = format!("{}/registrations/{registration_id}", server.id_scope());
        let token = self
            .device
            .tpm
            .sign(&resource, unix_now() + 3600, Some("registration"));
        let (mut status, mut body) = self.register(Some(&token)).await;
        // Still assigning after the reply budget: poll, as the SDKs do.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while status == 202 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let url = server.url(&format!(
                "{}/registrations/{registration_id}/operations/{}{API}",
                server.id_scope(),
                body["operationId"].as_str().unwrap()
            ));
            let poll = server.http().get(url).header("Authorization", &token);
            (status, _, body) = common::answer(poll).await;
            if body["status"] == "assigning" {
                status = 202;
            }
        }
        (status, body)
    }

    /// The challenge, then the signed retry, which registers the device
    /// (polled until it is done): the final operation status.
    async fn provision(&self) -> (u16, Value) {
        let (status, challenge) = self.ask().await;
        if status != 401 || challenge["authenticationKey"].is_null() {
            return (status, challenge);
        }
        self.answer(&challenge).await
    }
}

/// `onramp group create` of a TPM group trusting `ca`, with `extra` flags.
fn tpm_group(
    server: &Server,
    dir: &std::path::Path,
    id: &str,
    ca: &ManufacturerCa,
    extra: &[&str],
) -> Value {
    let path = dir.join(format!("{id}-ca.pem"));
    std::fs::write(&path, &ca.cert_pem).unwrap();
    let mut args = vec!["group", "create", id, "--tpm-ca", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    server.cli_json(&args)
}

#[track_caller]
fn assert_refused(
    what: &str,
    (status, body): (u16, Value),
    want_status: u16,
    want_code: u64,
    says: &str,
) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(
        body["errorCode"].as_u64(),
        Some(want_code),
        "{what}: {body}"
    );
    common::assert_message_says(&body, says);
}

#[tokio::test]
async fn a_tpm_group_admits_a_tpm_by_its_ek_certificate_over_https() {
    let Some(device) = Device::start() else {
        return;
    };
    let server = Server::start("127.0.0.1:0");
    let temp = tempfile::tempdir().unwrap();
    let maker = ManufacturerCa::new("Onramp Test TPM Manufacturer");
    let group = tpm_group(&server, temp.path(), "tpm-line", &maker, &[]);
    assert_eq!(group["attestation"]["type"], "tpm");
    assert_eq!(
        group["attestation"]["tpm"]["manufacturerCertificates"][0]
            .as_str()
            .unwrap()
            .trim(),
        maker.cert_pem.trim()
    );
    let certificate = maker.issue(&device.ek);

    // Admitted: challenged, signed in the TPM, assigned under the group,
    // with the hub key wrapped for the TPM.
    let (status, op) = device
        .registration(&server, "tpm-unit-1", Some(&certificate))
        .provision()
        .await;
    common::assert_assigned(status, &op, 200);
    let state = &op["registrationState"];
    assert!(state["tpm"]["authenticationKey"].is_string(), "{op}");
    let listed = server.cli_json(&["registration", "list", "--group-id", "tpm-line"]);
    let ids = common::registration_ids(&listed);
    assert_eq!(ids, ["tpm-unit-1"], "{listed}");

    // The certificate may come in the custom payload instead, which every
    // SDK lets an application set.
    let body = json!({
        "registrationId": "tpm-unit-2",
        "tpm": {"endorsementKey": device.ek.to_base64(), "storageRootKey": device.srk.to_base64()},
        "payload": {"endorsementKeyCertificate": certificate},
    });
    let (status, _, challenge) = server
        .register_raw(
            &server.id_scope(),
            "tpm-unit-2",
            API,
            None,
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 401, "{challenge}");
    assert!(challenge["authenticationKey"].is_string(), "{challenge}");

    // Refusals, each before any challenge: an EK certificate from another
    // manufacturer, a certificate for another TPM's endorsement key, an
    // expired certificate, a certificate that is not one, and no
    // certificate at all, with the EK hash on no list.
    let foreign = ManufacturerCa::new("Another Manufacturer").issue(&device.ek);
    let other_ek =
        RsaPublic::parse(&std::fs::read(swtpm::data_dir().join("ek.pub")).unwrap()).unwrap();
    assert_ne!(other_ek.modulus(), device.ek.modulus());
    let another_key = maker.issue(&other_ek);
    let now = OffsetDateTime::now_utc();
    let expired = maker.issue_valid(
        &device.ek,
        now - Duration::days(400),
        now - Duration::days(1),
    );
    let ek_hash = device.ek.sha256_hex();
    let refusals: [(&str, Option<&str>, u16, u64, &str); 5] = [
        (
            "another CA",
            Some(&foreign),
            401,
            401004,
            "manufacturerCertificates",
        ),
        (
            "another key",
            Some(&another_key),
            401,
            401002,
            "certifies another key",
        ),
        (
            "expired",
            Some(&expired),
            401,
            401005,
            "endorsement key certificate is valid from",
        ),
        (
            "garbage",
            Some("bm90IGEgY2VydA=="),
            400,
            400004,
            "tpm.endorsementKeyCertificate",
        ),
        ("no certificate", None, 404, 404201, &ek_hash),
    ];
    for (what, certificate, status, code, says) in refusals {
        let attempt = device.registration(&server, "tpm-unit-3", certificate);
        assert_refused(what, attempt.ask().await, status, code, says);
    }

    // An allow list: only the registration IDs and EK hashes it names.
    server.cli_ok(&["group", "delete", "tpm-line"]);
    tpm_group(
        &server,
        temp.path(),
        "tpm-listed",
        &maker,
        &["--allow-registration-id", "tpm-unit-1"],
    );
    assert_refused(
        "not on the allow list",
        device
            .registration(&server, "tpm-unit-4", Some(&certificate))
            .ask()
            .await,
        404,
        404201,
        "allow list names neither",
    );
    let (status, op) = device
        .registration(&server, "tpm-unit-1", Some(&certificate))
        .provision()
        .await;
    common::assert_assigned(status, &op, 200);

    // The EK hash alone admits, without a certificate.
    server.cli_ok(&["group", "delete", "tpm-listed"]);
    let hash = device.ek.sha256_hex();
    tpm_group(
        &server,
        temp.path(),
        "tpm-hashes",
        &maker,
        &["--allow-ek-hash", &hash.to_uppercase()],
    );
    let (status, op) = device
        .registration(&server, "tpm-unit-5", None)
        .provision()
        .await;
    common::assert_assigned(status, &op, 200);

    // A disabled group refuses, once the device has proven its EK.
    server.cli_ok(&["group", "update", "tpm-hashes", "--disable"]);
    assert_refused(
        "disabled group",
        device
            .registration(&server, "tpm-unit-5", None)
            .provision()
            .await,
        401,
        401003,
        "disabled",
    );

    // An individual enrollment takes precedence over the group.
    server.cli_ok(&["group", "update", "tpm-hashes", "--enable"]);
    server.cli_ok(&[
        "enrollment",
        "create",
        "tpm-unit-6",
        "--tpm-ek",
        &device.ek.to_base64(),
        "--disabled",
    ]);
    assert_refused(
        "individual first",
        device
            .registration(&server, "tpm-unit-6", None)
            .provision()
            .await,
        401,
        401003,
        "individual enrollment",
    );
}

#[tokio::test]
async fn tpm_groups_are_validated_through_the_service_api() {
    let server = Server::start("127.0.0.1:0");
    let maker = ManufacturerCa::new("Onramp Test TPM Manufacturer");
    let ek = STANDARD.encode(std::fs::read(swtpm::data_dir().join("ek.pub")).unwrap());
    let put = |body: Value| {
        let server = &server;
        async move {
            server
                .owner_call(Method::PUT, &format!("enrollmentGroups/g{API}"), Some(body))
                .await
        }
    };
    let group =
        |tpm: Value| json!({"enrollmentGroupId": "g", "attestation": {"type": "tpm", "tpm": tpm}});
    for (tpm, says) in [
        (
            json!({}),
            "attestation.tpm.manufacturerCertificates needs at least one",
        ),
        (
            json!({"manufacturerCertificates": ["bm9wZQ=="]}),
            "attestation.tpm.manufacturerCertificates[0]",
        ),
        (
            json!({"manufacturerCertificates": [maker.cert_pem], "allowEndorsementKeyHashes": ["abc"]}),
            "attestation.tpm.allowEndorsementKeyHashes[0] 'abc' is not a SHA-256",
        ),
        (
            json!({"manufacturerCertificates": [maker.cert_pem], "allowRegistrationIds": ["no spaces"]}),
            "attestation.tpm.allowRegistrationIds[0]",
        ),
        (
            json!({"manufacturerCertificates": [maker.cert_pem], "endorsementKey": ek}),
            "holds no endorsementKey",
        ),
    ] {
        let (status, body) = put(group(tpm.clone())).await;
        assert_eq!(status, 400, "{tpm}: {body}");
        assert_eq!(body["errorCode"], 400004, "{tpm}: {body}");
        common::assert_message_says(&body, says);
    }
    let (status, body) = put(group(json!({
        "manufacturerCertificates": [maker.cert_pem],
        "allowEndorsementKeyHashes": ["AB".repeat(32)],
    })))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["attestation"]["tpm"]["allowEndorsementKeyHashes"][0],
        "ab".repeat(32),
        "kept lower-case"
    );
    assert!(
        body["attestation"]["tpm"].get("endorsementKey").is_none(),
        "{body}"
    );

    // The group members belong to groups; an enrollment refuses them.
    let (status, body) = server
        .owner_call(
            Method::PUT,
            &format!("enrollments/d{API}"),
            Some(json!({"attestation": {"type": "tpm", "tpm": {"endorsementKey": ek, "manufacturerCertificates": [maker.cert_pem]}}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    common::assert_message_says(&body, "belong to TPM enrollment groups");
    let out = server.cli(&["enrollment", "create", "d", "--tpm-ca", "/dev/null"]);
    common::assert_failed_saying(&out, "onramp group create");
}

#[tokio::test]
async fn the_simulator_provisions_a_software_tpm_through_a_tpm_group() {
    let server = Server::start("127.0.0.1:0");
    let (temp, tpm) = common::software_tpm_file();
    let provision = |id: &str, extra: &[&str]| {
        let mut args = vec![
            "device",
            "provision",
            "--registration-id",
            id,
            "--tpm",
            &tpm,
        ];
        args.extend_from_slice(extra);
        server.cli(&args)
    };

    // Its first run makes the TPM and says how to admit it by its EK hash.
    let out = provision("sim-tpm-g1", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    let hash = stderr
        .split("--allow-ek-hash ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no EK hash in: {stderr}"))
        .to_owned();
    let ek = stderr
        .split("--tpm-ek ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no EK in: {stderr}"));
    let ek = RsaPublic::from_base64(ek).unwrap();
    assert_eq!(ek.sha256_hex(), hash);

    // A group trusting its manufacturer admits it with its EK certificate,
    // sent in the custom payload.
    let maker = ManufacturerCa::new("Simulated TPM Manufacturer");
    tpm_group(&server, temp.path(), "sim-line", &maker, &[]);
    let payload = json!({"endorsementKeyCertificate": maker.issue(&ek)}).to_string();
    let out = provision("sim-tpm-g1", &["--payload", &payload]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["status"], "assigned", "{status}");

    // Without the certificate, only a group that lists its EK hash admits it.
    let out = provision("sim-tpm-g2", &[]);
    common::assert_failed_saying(&out, "404201");
    server.cli_ok(&["group", "delete", "sim-line"]);
    tpm_group(
        &server,
        temp.path(),
        "sim-hashes",
        &maker,
        &["--allow-ek-hash", &hash],
    );
    let out = provision("sim-tpm-g2", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = server.cli_json(&["registration", "list", "--group-id", "sim-hashes"]);
    assert_eq!(listed[0]["registrationId"], "sim-tpm-g2", "{listed}");
}
