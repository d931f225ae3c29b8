//! The service API's JSON against the official OpenAPI specifications in
//! `../shared/specs` (DPS service API 2026-11-01, IoT Hub 2021-04-12).
//!
//! Objects are checked strictly: a member the specification does not define
//! fails the check, so a misspelt or invented field cannot slip through.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::path::PathBuf;

use common::Server;
use reqwest::Method;
use serde_json::{Value, json};

fn spec(relative: &str) -> Option<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/specs")
        .join(relative);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).unwrap()),
        Err(_) => {
            eprintln!(
                "skipping: the specification {} is not on this machine",
                path.display()
            );
            None
        }
    }
}

/// Sets `additionalProperties: false` on every object schema that lists its
/// properties and says nothing about others. Walks schemas only (a
/// `properties` map is a map of schemas, not a schema).
fn strict(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    if map.contains_key("properties") && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        props.values_mut().for_each(strict);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = map.get_mut(key) {
            strict(inner);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(list)) = map.get_mut(key) {
            list.iter_mut().for_each(strict);
        }
    }
}

fn strict_definitions(definitions: &mut Value) {
    if let Value::Object(defs) = definitions {
        defs.values_mut().for_each(strict);
    }
}

struct Spec {
    definitions: Value,
}

impl Spec {
    fn load(relative: &str) -> Option<Spec> {
        let mut doc = spec(relative)?;
        let mut definitions = doc["definitions"].take();
        strict_definitions(&mut definitions);
        Some(Spec { definitions })
    }

    fn check(&self, definition: &str, value: &Value) {
        let schema =
            json!({"$ref": format!("#/definitions/{definition}"), "definitions": self.definitions});
        let validator = jsonschema::draft4::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{definition} does not conform:\n  {}\n{value:#}",
            errors.join("\n  ")
        );
    }
}

fn certificate_pem(cn: &str, ca: bool) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test]
async fn service_api_json_conforms_to_the_dps_specification() {
    let Some(mut dps) = Spec::load("dps-service/service.json") else {
        return;
    };
    // The specification types every twin value as an object; DPS (and every
    // SDK) accepts any JSON value there, as Onramp does.
    dps.definitions["TwinCollection"]["additionalProperties"] = json!({});
    let server = Server::start("127.0.0.1:0");
    let cs = server.owner_connection_string().await;
    let hub = server.embedded_hub().await.name;
    let call = |method: Method, path: &str, body: Option<Value>| {
        let (cs, path) = (cs.clone(), format!("{path}?api-version=2021-10-01"));
        let server = &server;
        async move { server.service_call(&cs, method, &path, body, &[]).await }
    };

    let sym = json!({
        "registrationId": "conf-sym",
        "deviceId": "conf-sym-device",
        "attestation": {"type": "symmetricKey"},
        "capabilities": {"iotEdge": false},
        "initialTwin": {"tags": {"site": "lab"}, "properties": {"desired": {"rate": 5}}},
        "provisioningStatus": "enabled",
        "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": false},
        "allocationPolicy": "hashed",
        "iotHubs": [hub],
        "optionalDeviceInformation": {"model": "x1"}
    });
    let (status, _, e) = call(Method::PUT, "enrollments/conf-sym", Some(sym)).await;
    assert_eq!(status, 200, "{e}");
    dps.check("IndividualEnrollment", &e);

    // X.509 and TPM mechanisms parse, gain certificate info, and round-trip.
    let device_cert = certificate_pem("conf-x509", false);
    let (status, _, e) = call(
        Method::PUT,
        "enrollments/conf-x509",
        Some(json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": device_cert}}}}})),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    dps.check("IndividualEnrollment", &e);
    let info = &e["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    assert_eq!(info["subjectName"], "CN=conf-x509");
    assert_eq!(info["sha256Thumbprint"].as_str().unwrap().len(), 64);
    assert_eq!(info["version"], 3);
    let (_, _, read) = call(Method::GET, "enrollments/conf-x509", None).await;
    assert_eq!(
        read["attestation"], e["attestation"],
        "X.509 attestation round-trips"
    );

    // An endorsement key exported from a software TPM with the SDKs' template.
    use base64::Engine as _;
    let ek = base64::engine::general_purpose::STANDARD
        .encode(include_bytes!("../../onramp-core/tests/data/tpm/ek.pub"));
    let (status, _, e) = call(
        Method::PUT,
        "enrollments/conf-tpm",
        Some(json!({"attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}})),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    dps.check("IndividualEnrollment", &e);
    assert_eq!(e["attestation"]["tpm"]["endorsementKey"], ek.as_str());

    let ca_cert = certificate_pem("conf-root", true);
    let (status, _, v) = call(
        Method::PUT,
        "certificates/my-root",
        Some(json!({"certificate": ca_cert})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for (id, x509) in [
        (
            "conf-grp-signing",
            json!({"signingCertificates": {"primary": {"certificate": ca_cert}}}),
        ),
        (
            "conf-grp-ca",
            json!({"caReferences": {"primary": "my-root"}}),
        ),
    ] {
        let (status, _, g) = call(
            Method::PUT,
            &format!("enrollmentGroups/{id}"),
            Some(json!({"attestation": {"type": "x509", "x509": x509}})),
        )
        .await;
        assert_eq!(status, 200, "{g}");
        dps.check("EnrollmentGroup", &g);
    }
    let (_, _, g) = call(
        Method::PUT,
        "enrollmentGroups/conf-grp",
        Some(
            json!({"attestation": {"type": "symmetricKey"}, "initialTwin": {"tags": {"line": 7}}}),
        ),
    )
    .await;
    dps.check("EnrollmentGroup", &g);
    let (_, _, mechanism) = call(
        Method::POST,
        "enrollmentGroups/conf-grp/attestationmechanism",
        None,
    )
    .await;
    dps.check("AttestationMechanism", &mechanism);

    // A registration record, read alone and through a group query.
    let group_key = mechanism["symmetricKey"]["primaryKey"].as_str().unwrap();
    let device_key = onramp_core::sas::derive_device_key(group_key, "conf-dev").unwrap();
    let (status, _, op) = server
        .register("conf-dev", &device_key, "?api-version=2021-06-01")
        .await;
    common::assert_assigned(status, &op, 202);
    let (_, _, state) = call(Method::GET, "registrations/conf-dev", None).await;
    dps.check("DeviceRegistrationState", &state);
    let (_, _, states) = call(
        Method::POST,
        "registrations/conf-grp/query",
        Some(json!({"query": "*"})),
    )
    .await;
    for s in states.as_array().unwrap() {
        dps.check("DeviceRegistrationState", s);
    }
    let (_, _, list) = call(
        Method::POST,
        "enrollments/query",
        Some(json!({"query": "*"})),
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    for e in list.as_array().unwrap() {
        dps.check("IndividualEnrollment", e);
    }

    let (status, _, bulk) = call(
        Method::POST,
        "enrollments",
        Some(json!({"mode": "create", "enrollments": [
            {"registrationId": "conf-bulk", "attestation": {"type": "symmetricKey"}},
            {"registrationId": "conf-sym", "attestation": {"type": "symmetricKey"}}
        ]})),
    )
    .await;
    assert_eq!(status, 200, "{bulk}");
    dps.check("BulkEnrollmentOperationResult", &bulk);
    assert_eq!(bulk["isSuccessful"], false);

    let (status, _, error) = call(Method::GET, "enrollments/nobody", None).await;
    assert_eq!(status, 404);
    dps.check("ProvisioningServiceErrorDetails", &error);
}

#[tokio::test]
async fn companion_hub_json_conforms_to_the_iot_hub_specification() {
    let Some(mut iothub) = Spec::load("iothub-service/service.json") else {
        return;
    };
    // The specification types tag and property values as objects; IoT Hub
    // (and every SDK) accepts any JSON value there, as Onramp does.
    iothub.definitions["Twin"]["properties"]["tags"] = json!({"type": "object"});
    for side in ["desired", "reported"] {
        iothub.definitions["TwinProperties"]["properties"][side] = json!({"type": "object"});
    }
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("conf-hub", json!({"initialTwin": {"tags": {"site": "lab"}, "properties": {"desired": {"rate": 5}}}})).await;
    let (status, _, op) = server
        .register("conf-hub", &key, "?api-version=2021-06-01")
        .await;
    common::assert_assigned(status, &op, 202);

    let hub = server.embedded_hub().await;
    let hub_cs = hub.connection_string.expose().to_owned();
    let (status, device) = server
        .get(&hub_cs, "devices/conf-hub?api-version=2021-04-12")
        .await;
    assert_eq!(status, 200, "{device}");
    iothub.check("Device", &device);
    let (status, twin) = server
        .get(&hub_cs, "twins/conf-hub?api-version=2021-04-12")
        .await;
    assert_eq!(status, 200, "{twin}");
    iothub.check("Twin", &twin);
    assert_eq!(twin["properties"]["desired"]["rate"], 5);
}
