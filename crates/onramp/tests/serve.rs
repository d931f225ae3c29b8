//! `onramp serve` over real sockets: the device API's refusals, the service
//! API's rights, persistence across restarts, secrets at rest, and the CLI.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::path::Path;

use common::{Server, onramp, unix_now};
use onramp_core::ports::{RegistrationRecord, Store, StoreExt, StoredRecord};
use onramp_model::IdKey;
use onramp_model::IndividualEnrollment;
use reqwest::Method;
use serde_json::{Value, json};

/// An Azure error body with the expected status and code.
fn assert_azure_error(
    what: &str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    want_status: u16,
    want_code: u64,
) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(
        body["errorCode"].as_u64(),
        Some(want_code),
        "{what}: {body}"
    );
    assert!(
        body["trackingId"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| m.len() > 20),
        "{what}: {body}"
    );
    assert!(body["timestampUtc"].as_str().is_some(), "{what}: {body}");
    assert_eq!(
        headers["content-type"], "application/json; charset=utf-8",
        "{what}"
    );
    assert!(headers.contains_key("x-ms-error-code"), "{what}");
}

/// A service API call at api-version 2021-10-01 that must be refused with
/// an Azure error: `(what, HTTP status, error code)`. Returns the error.
async fn refused(
    server: &Server,
    connection_string: &str,
    (method, path, body, headers): (Method, &str, Option<Value>, &[(&str, &str)]),
    (what, want_status, want_code): (&str, u16, u64),
) -> Value {
    let path = format!("{path}?api-version=2021-10-01");
    let (status, headers, v) = server
        .service_call(connection_string, method, &path, body, headers)
        .await;
    assert_azure_error(what, status, &headers, &v, want_status, want_code);
    v
}

/// A GET of `path` that must be refused; see [`refused`].
async fn refused_get(
    server: &Server,
    connection_string: &str,
    path: &str,
    want: (&str, u16, u64),
) -> Value {
    refused(
        server,
        connection_string,
        (Method::GET, path, None, &[]),
        want,
    )
    .await
}

#[tokio::test]
async fn device_api_refuses_bad_input_and_leaves_no_trace() {
    let server = Server::start("127.0.0.1:0");
    let scope = server.id_scope();
    let key = server.enroll("dev-ok", json!({})).await;
    let off_key = server
        .enroll("dev-off", json!({"provisioningStatus": "disabled"}))
        .await;
    let body = |id: &str| serde_json::to_vec(&json!({"registrationId": id})).unwrap();
    let q = "?api-version=2019-03-31";
    let wrong = "d3Jvbmcta2V5LWZvci10ZXN0cy0xMjM0NQ==";

    struct Case {
        what: &'static str,
        id: &'static str,
        query: &'static str,
        scope: String,
        body: Vec<u8>,
        token: String,
        status: u16,
        code: u64,
    }
    let case = |what, id: &'static str, token: String, status, code| Case {
        what,
        id,
        query: q,
        scope: scope.clone(),
        body: body(id),
        token,
        status,
        code,
    };
    let cases = vec![
        case(
            "wrong key",
            "dev-ok",
            server.device_token("dev-ok", wrong, unix_now() + 600),
            401,
            401002,
        ),
        case(
            "expired token",
            "dev-ok",
            server.device_token("dev-ok", &key, unix_now() - 3600),
            401,
            401002,
        ),
        case(
            "token of another registration",
            "dev-ok",
            server.device_token("dev-other", &key, unix_now() + 600),
            401,
            401002,
        ),
        case(
            "unknown registration ID",
            "nobody",
            server.device_token("nobody", &key, unix_now() + 600),
            404,
            404201,
        ),
        case(
            "disabled enrollment",
            "dev-off",
            server.device_token("dev-off", &off_key, unix_now() + 600),
            401,
            401003,
        ),
        Case {
            scope: "0ne00000000".into(),
            token: onramp_core::sas::sign(
                "0ne00000000/registrations/dev-ok",
                &key,
                unix_now() + 600,
                None,
            )
            .unwrap(),
            ..case("wrong ID scope", "dev-ok", String::new(), 404, 404001)
        },
        Case {
            body: b"{\"registrationId\": ".to_vec(),
            ..case(
                "malformed JSON",
                "dev-ok",
                server.device_token("dev-ok", &key, unix_now() + 600),
                400,
                400001,
            )
        },
        Case {
            body: serde_json::to_vec(
                &json!({"registrationId": "dev-ok", "payload": {"blob": "x".repeat(97 * 1024)}}),
            )
            .unwrap(),
            ..case(
                "body over 96 KB",
                "dev-ok",
                server.device_token("dev-ok", &key, unix_now() + 600),
                413,
                413001,
            )
        },
        Case {
            query: "",
            ..case(
                "missing api-version",
                "dev-ok",
                server.device_token("dev-ok", &key, unix_now() + 600),
                400,
                400002,
            )
        },
    ];
    for c in cases {
        let (status, headers, v) = server
            .register_raw(&c.scope, c.id, c.query, Some(&c.token), c.body)
            .await;
        assert_azure_error(c.what, status, &headers, &v, c.status, c.code);
    }

    // Nothing was recorded and no hub device was created.
    let cs = server.owner_connection_string().await;
    let hub = server.embedded_hub().await;
    let hub_client = server.hub_client();
    for id in ["dev-ok", "dev-off", "nobody", "dev-other"] {
        let (status, v) = server
            .get(&cs, &format!("registrations/{id}?api-version=2021-10-01"))
            .await;
        assert_eq!(
            (status, v["errorCode"].as_u64()),
            (404, Some(404203)),
            "{id}: {v}"
        );
        assert!(
            hub_client.get_device(&hub, id).await.unwrap().is_none(),
            "{id} reached the hub"
        );
    }

    // Controls: an old api-version is accepted and the device is assigned at once.
    let token = server.device_token("dev-ok", &key, unix_now() + 600);
    let (status, headers, v) = server
        .register("dev-ok", &key, "?api-version=2017-11-15")
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    assert_eq!(v["status"], "assigned", "{v}");
    assert!(v["operationId"].as_str().is_some_and(|o| {
        o.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    }));
    assert_eq!(v["registrationState"]["assignedHub"], hub.name.as_str());
    assert!(
        hub_client
            .get_device(&hub, "dev-ok")
            .await
            .unwrap()
            .is_some()
    );

    // The operation stays queryable, as Edge and some SDKs always poll.
    let op = v["operationId"].as_str().unwrap();
    let device = |method, path: String| {
        let url = server.url(&format!("{scope}/registrations/dev-ok{path}"));
        server
            .http()
            .request(method, url)
            .header("Authorization", &token)
    };
    let poll = device(
        Method::GET,
        format!("/operations/{op}?api-version=2019-03-31"),
    );
    let (status, _, polled) = common::answer(poll.body("{}")).await;
    common::assert_assigned(status, &polled, 200);
    assert_eq!(polled["operationId"], op);

    // The device's own status lookup.
    let lookup = device(Method::POST, "?api-version=2021-06-01".into());
    let (status, _, state) = common::answer(lookup).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["deviceId"], "dev-ok");
}

#[tokio::test]
async fn service_calls_need_a_valid_token_and_the_right_right() {
    let server = Server::start("127.0.0.1:0");
    server.enroll("dev-1", json!({})).await;
    let text = server.cli_ok(&[
        "service",
        "add-policy",
        "reader",
        "--rights",
        "EnrollmentRead",
    ]);
    let reader = text
        .lines()
        .find_map(|l| l.strip_prefix("Connection string: "))
        .unwrap()
        .to_owned();

    let (status, v) = server
        .get(&reader, "enrollments/dev-1?api-version=2021-10-01")
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["attestation"]["symmetricKey"].get("primaryKey").is_none(),
        "GET hides keys: {v}"
    );
    // Each refusal names the right the call needs.
    for (method, path, body, what, right) in [
        (
            Method::PUT,
            "enrollments/dev-2",
            Some(json!({"attestation": {"type": "symmetricKey"}})),
            "write without EnrollmentWrite",
            "EnrollmentWrite",
        ),
        (
            Method::POST,
            "enrollments/dev-1/attestationmechanism",
            None,
            "keys without EnrollmentWrite",
            "EnrollmentWrite",
        ),
        (
            Method::GET,
            "registrations/dev-1",
            None,
            "registrations without RegistrationStatusRead",
            "RegistrationStatusRead",
        ),
    ] {
        let request = (method, path, body, &[][..]);
        let v = refused(&server, &reader, request, (what, 403, 403001)).await;
        assert!(
            v["message"].as_str().unwrap().contains(right),
            "{what}: {v}"
        );
    }

    // No token, a forged one, and a missing api-version.
    let resp = server
        .http()
        .get(server.url("enrollments/dev-1?api-version=2021-10-01"))
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    assert_azure_error(
        "no token",
        status,
        &headers,
        &resp.json().await.unwrap(),
        401,
        401001,
    );
    let forged = reader.replace("SharedAccessKey=", "SharedAccessKey=AAAA");
    refused_get(
        &server,
        &forged,
        "enrollments/dev-1",
        ("forged key", 401, 401002),
    )
    .await;
    let (status, headers, v) = server
        .service_call(&reader, Method::GET, "enrollments/dev-1", None, &[])
        .await;
    assert_azure_error("no api-version", status, &headers, &v, 400, 400002);

    // Tokens as each SDK makes them, and tokens that must be refused.
    let cs = onramp_core::connection_string::ConnectionString::parse(&reader).unwrap();
    let key = cs.shared_access_key.clone().unwrap();
    let token = |resource: &str, expiry: i64| {
        onramp_core::sas::sign(resource, key.expose(), expiry, Some("reader")).unwrap()
    };
    let get = |authorization: String, api_version: &'static str| {
        let request = server
            .http()
            .get(server.url(&format!("enrollments/dev-1?api-version={api_version}")))
            // What the C and Java SDKs add: a body-less GET with a content
            // type and length, a charset header and C's `UserAgent`.
            .header("content-type", "application/json; charset=utf-8")
            .header("content-length", "0")
            .header("charset", "utf-8")
            .header("UserAgent", "iothub_dps_prov_client/1.0")
            .header("authorization", authorization);
        async move {
            let resp = request.send().await.unwrap();
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            (status, headers, resp.json::<Value>().await.unwrap())
        }
    };
    let host = cs.host_name.clone();
    let later = unix_now() + 600;
    for (resource, api_version) in [
        (host.clone(), "2018-04-01"),
        (host.to_ascii_uppercase(), "2019-03-31"),
        (format!("{host}/enrollments/dev-1"), "2021-10-01"),
    ] {
        let (status, _, v) = get(token(&resource, later), api_version).await;
        assert_eq!(status, 200, "{resource} with {api_version}: {v}");
        assert_eq!(v["registrationId"], "dev-1");
    }
    let (status, headers, v) = get(token("other.example.net", later), "2021-10-01").await;
    assert_azure_error("token for another host", status, &headers, &v, 401, 401002);
    common::assert_message_says(&v, "other.example.net");
    let (status, headers, v) = get(token(&host, unix_now() - 3600), "2021-10-01").await;
    assert_azure_error("expired token", status, &headers, &v, 401, 401002);
}

#[tokio::test]
async fn service_api_pages_and_guards_with_etags() {
    let server = Server::start("127.0.0.1:0");
    let cs = server.owner_connection_string().await;
    for i in 0..7 {
        server.enroll(&format!("page-{i}"), json!({})).await;
    }
    let mut seen = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "3")];
        if let Some(c) = &continuation {
            headers.push(("x-ms-continuation", c.as_str()));
        }
        let (status, h, v) = server
            .service_call(
                &cs,
                Method::POST,
                "enrollments/query?api-version=2021-10-01",
                Some(json!({"query": "SELECT * FROM enrollments"})),
                &headers,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(h["x-ms-item-type"], "Enrollment");
        let page = v.as_array().unwrap();
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|e| common::text(&e["registrationId"])));
        continuation = h
            .get("x-ms-continuation")
            .map(|c| c.to_str().unwrap().to_owned());
        if continuation.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");

    let (_, e) = server
        .get(&cs, "enrollments/page-0?api-version=2021-10-01")
        .await;
    let etag = common::text(&e["etag"]);
    let mut updated = e.clone();
    updated["initialTwin"] = json!({"tags": {"v": 2}});
    let (status, _, v) = server
        .service_call(
            &cs,
            Method::PUT,
            "enrollments/page-0?api-version=2021-10-01",
            Some(updated.clone()),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["etag"], etag.as_str());
    refused(
        &server,
        &cs,
        (
            Method::PUT,
            "enrollments/page-0",
            Some(updated),
            &[("If-Match", &etag)],
        ),
        ("stale etag", 412, 412001),
    )
    .await;
    let (status, _, _) = server
        .service_call(
            &cs,
            Method::DELETE,
            "enrollments/page-0?api-version=2021-10-01",
            None,
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(status, 204);
    refused_get(&server, &cs, "enrollments/page-0", ("deleted", 404, 404201)).await;
    let v = refused(
        &server,
        &cs,
        (
            Method::PUT,
            "enrollments/bad",
            Some(
                json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": 5}}}),
            ),
            &[],
        ),
        ("wrong type", 400, 400001),
    )
    .await;
    common::assert_message_says(&v, "attestation.symmetricKey.primaryKey");
}

/// The attestation mechanism of `resource` (`enrollments/{id}` or
/// `enrollmentGroups/{id}`) with its keys, which a GET hides.
async fn attestation_mechanism(server: &Server, connection_string: &str, resource: &str) -> Value {
    let path = format!("{resource}/attestationmechanism?api-version=2021-10-01");
    let (status, v) = server
        .call(connection_string, Method::POST, &path, None)
        .await;
    assert_eq!(status, 200, "{resource}: {v}");
    v
}

#[tokio::test]
async fn restarts_keep_everything_and_no_secret_is_stored_in_plaintext() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");

    // An extra companion hub, linked through its connection string.
    let hub_dir = temp.path().join("hub2");
    let hub2 = common::HubProcess::start(&hub_dir, None);
    let hub2_cs = hub2.connection_string.clone();
    // Onramp trusts the second hub's development CA through its configuration file.
    let config = temp.path().join("onramp.toml");
    std::fs::write(
        &config,
        format!("[tls]\ntrust = [{:?}]\n", hub_dir.join("tls/ca.pem")),
    )
    .unwrap();
    let config_flag = ["--config", config.to_str().unwrap()];

    let mut server = Server::start_in(&dir, &listen, &config_flag);
    // serve.json can appear a moment before the summary is printed.
    common::wait_for(
        std::time::Duration::from_secs(30),
        "the connection string printed at creation",
        || Some(()).filter(|()| server.stdout().contains("SharedAccessKey=")),
    );
    // Links go through the core's rules: a refused edit changes nothing.
    let linked_hub = |args: &[&str]| server.cli(&[&["linked-hub"], args].concat());
    for (args, says) in [
        (["--region", " ", "--weight", "2"], "region is empty"),
        (["--region", "lab", "--weight", "0"], "use 1 to 1000"),
    ] {
        let out = linked_hub(&[&["add", "--connection-string", &hub2_cs][..], &args[..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    let out = linked_hub(&[
        "add",
        "--connection-string",
        &hub2_cs,
        "--region",
        "lab",
        "--weight",
        "2",
    ]);
    common::succeeded(&out);
    let hub2_name = hub2_cs
        .split(';')
        .find_map(|p| p.strip_prefix("HostName="))
        .unwrap()
        .to_owned();
    let out = linked_hub(&["update", &hub2_name, "--weight", "1001"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("use 1 to 1000"),
        "{stderr}"
    );

    let ind_key = server
        .enroll("keep-1", json!({"initialTwin": {"tags": {"t": 1}}}))
        .await;
    let group_key = server.enroll_group("keep-group", json!({})).await;
    let device_key = onramp_core::sas::derive_device_key(&group_key, "keep-2").unwrap();
    for (id, key) in [("keep-1", ind_key.clone()), ("keep-2", device_key.clone())] {
        let (status, _, v) = server.register(id, &key, "?api-version=2021-06-01").await;
        common::assert_assigned(status, &v, 202);
    }
    let owner_cs = server.owner_connection_string().await;
    let scope = server.id_scope();
    let embedded_cs = server
        .embedded_hub()
        .await
        .connection_string
        .expose()
        .to_owned();
    server.stop();

    let server = Server::start_in(&dir, &listen, &config_flag);
    assert_eq!(server.id_scope(), scope, "the ID scope is kept");
    assert!(
        !server.stdout().contains("SharedAccessKey="),
        "the connection string is printed only at creation"
    );
    assert_eq!(server.owner_connection_string().await, owner_cs);
    let hubs = server
        .any_store()
        .await
        .linked_hubs("default")
        .await
        .unwrap();
    assert_eq!(hubs.len(), 2, "{hubs:?}");
    assert!(
        hubs.iter()
            .any(|h| h.allocation_weight == 2 && h.location == "lab")
    );
    for id in ["keep-1", "keep-2"] {
        let (status, v) = server
            .get(
                &owner_cs,
                &format!("registrations/{id}?api-version=2021-10-01"),
            )
            .await;
        common::assert_assigned(status, &v, 200);
    }
    let att = attestation_mechanism(&server, &owner_cs, "enrollments/keep-1").await;
    assert_eq!(
        att["symmetricKey"]["primaryKey"],
        ind_key.as_str(),
        "keys survive the restart"
    );
    // The device can still register with its key after the restart.
    let (status, _, v) = server
        .register("keep-1", &ind_key, "?api-version=2021-06-01")
        .await;
    common::assert_assigned(status, &v, 202);
    let g = attestation_mechanism(&server, &owner_cs, "enrollmentGroups/keep-group").await;
    let group_secondary = common::text(&g["symmetricKey"]["secondaryKey"]);
    let ind_secondary = common::text(&att["symmetricKey"]["secondaryKey"]);
    drop(server);
    drop(hub2);

    let key_of = |cs: &str| cs.split("SharedAccessKey=").nth(1).unwrap().to_owned();
    let secrets = [
        ind_key,
        ind_secondary,
        group_key,
        group_secondary,
        device_key,
        key_of(&owner_cs),
        key_of(&embedded_cs),
        key_of(&hub2_cs),
    ];
    let mut files = Vec::new();
    for root in [dir.clone(), hub_dir] {
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_file()
                && (name.ends_with(".db") || name.ends_with(".db-wal") || name.ends_with(".db-shm"))
            {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    use base64::Engine as _;
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        for secret in &secrets {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(secret)
                .unwrap();
            for needle in [secret.as_bytes(), raw.as_slice()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds a secret in plaintext",
                    path.display()
                );
            }
        }
    }
}

/// The arguments of `onramp device provision` for `id` with `credential`
/// (and whatever else follows it).
fn provision<'a>(id: &'a str, credential: &[&'a str]) -> Vec<&'a str> {
    [
        &["device", "provision", "--registration-id", id][..],
        credential,
    ]
    .concat()
}

#[tokio::test]
async fn first_provisioning_with_the_cli() {
    let server = Server::start("127.0.0.1:0");
    let created = server.cli_json(&["enrollment", "create", "my-first-device"]);
    let key = common::text(&created["attestation"]["symmetricKey"]["primaryKey"]);
    let result = server.cli_json(&provision("my-first-device", &["--key", &key]));
    assert_eq!(result["status"], "assigned");
    assert_eq!(result["registrationState"]["deviceId"], "my-first-device");

    let twin = r#"{"properties":{"desired":{"rate":10}}}"#;
    let group = server.cli_json(&["group", "create", "line-7", "--initial-twin", twin]);
    let group_key = common::text(&group["attestation"]["symmetricKey"]["primaryKey"]);
    let payload = r#"{"fw":"1.0"}"#;
    let result = server.cli_json(&provision(
        "line-7-unit-1",
        &["--group-key", &group_key, "--payload", payload],
    ));
    assert_eq!(
        result["registrationState"]["symmetricKey"]["enrollmentGroupId"],
        "line-7"
    );
    let listed = server.cli_json(&["group", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Listed and shown without keys unless asked for them.
    let shown = server.cli_json(&["group", "show", "line-7"]);
    assert_eq!(shown["initialTwin"]["properties"]["desired"]["rate"], 10);
    for (what, group) in [("listed", &listed[0]), ("shown", &shown)] {
        assert_eq!(group["enrollmentGroupId"], "line-7", "{what}");
        assert_eq!(group["attestation"]["type"], "symmetricKey", "{what}");
        let keys = &group["attestation"]["symmetricKey"];
        assert!(
            keys.is_object() && keys["primaryKey"].is_null() && keys["secondaryKey"].is_null(),
            "{what}: {group}"
        );
    }
    let shown = server.cli_json(&["group", "show", "line-7", "--keys"]);
    assert_eq!(
        shown["attestation"]["symmetricKey"]["primaryKey"],
        group_key.as_str()
    );
    let shown = server.cli_json(&["enrollment", "show", "my-first-device"]);
    assert_eq!(shown["registrationState"]["status"], "assigned");
    server.cli_ok(&["enrollment", "delete", "my-first-device"]);
    let listed = server.cli_json(&["enrollment", "list"]);
    assert_eq!(listed, json!([]));

    let out = server.cli(&provision("stranger", &["--key", &key]));
    common::assert_failed_saying(&out, "404201");
}

#[tokio::test]
async fn tpm_enrollments_from_the_cli() {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let server = Server::start("127.0.0.1:0");
    let data =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../onramp-core/tests/data/tpm");
    let (ek_path, srk_path) = (data.join("ek.pub"), data.join("srk.pub"));
    let ek = std::fs::read(&ek_path).unwrap();
    let ek_text = STANDARD.encode(&ek);
    let sdk_id = onramp_core::tpm::RsaPublic::parse(&ek)
        .unwrap()
        .registration_id();

    // Without an ID the enrollment takes the one the device's SDK computes
    // from its endorsement key; the key files are the TPM's binary form.
    let created = server.cli_json(&[
        "enrollment",
        "create",
        "--tpm-ek",
        ek_path.to_str().unwrap(),
        "--tpm-srk",
        srk_path.to_str().unwrap(),
    ]);
    assert_eq!(created["registrationId"], sdk_id.as_str());
    assert_eq!(created["attestation"]["type"], "tpm");
    assert_eq!(
        created["attestation"]["tpm"]["endorsementKey"],
        ek_text.as_str()
    );
    assert_eq!(
        created["attestation"]["tpm"]["storageRootKey"],
        STANDARD.encode(std::fs::read(&srk_path).unwrap()).as_str()
    );
    // Base64 text works as well, under an ID of the operator's choosing.
    let named = server.cli_json(&["enrollment", "create", "tpm-2", "--tpm-ek", &ek_text]);
    assert_eq!(named["registrationId"], "tpm-2");

    // The enrolled TPM's first request over HTTPS, its keys and no token:
    // 401 with the challenge in the members the SDKs read, and no `status`.
    let srk_text = STANDARD.encode(std::fs::read(&srk_path).unwrap());
    let keys = json!({"registrationId": sdk_id, "tpm": {"endorsementKey": ek_text, "storageRootKey": srk_text}});
    let (status, headers, body) = server
        .register_raw(
            &server.id_scope(),
            &sdk_id,
            "?api-version=2021-06-01",
            None,
            serde_json::to_vec(&keys).unwrap(),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["x-ms-error-code"], "Unauthorized");
    let mut members: Vec<&String> = body.as_object().unwrap().keys().collect();
    members.sort();
    assert_eq!(
        members,
        ["authenticationKey", "keyName", "message"],
        "{body}"
    );
    assert_eq!(body["keyName"], "registration");
    let blob = STANDARD
        .decode(body["authenticationKey"].as_str().unwrap())
        .unwrap();
    assert_eq!(blob.len(), 766, "an activation blob for a 32-byte key");
    assert_eq!(
        named["attestation"]["tpm"]["endorsementKey"],
        ek_text.as_str()
    );

    for (args, expected) in [
        (
            vec!["enrollment", "create", "tpm-3", "--tpm-ek", "AAAA"],
            "--tpm-ek 'AAAA': the key",
        ),
        (vec!["enrollment", "create"], "give the registration ID"),
        (
            vec!["group", "create", "tpm-group", "--tpm-ek", &ek_text],
            "attestation.tpm of an enrollment group holds no endorsementKey",
        ),
    ] {
        let out = server.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn unenrolled_certificates_and_tpm_devices_get_clear_errors() {
    let server = Server::start("127.0.0.1:0");
    // A device presenting a client certificate in the TLS handshake.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "x509-dev");
    let cert = params.self_signed(&key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in onramp_net::tls::certs_from_pem(&server.ca_pem).unwrap() {
        roots.add(ca).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(onramp_net::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let resp = client
        .put(server.url(&format!(
            "{}/registrations/x509-dev/register?api-version=2021-06-01",
            server.id_scope()
        )))
        .json(&json!({"registrationId": "x509-dev"}))
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body: Value = resp.json().await.unwrap();
    // Nothing enrolls this certificate: refused as untrusted, with the reason.
    assert_azure_error(
        "unenrolled x509 device",
        status,
        &headers,
        &body,
        401,
        401004,
    );
    common::assert_message_says(&body, "leads to no enrolled certificate");

    // A register request without a token.
    let tokenless = |registration_id: &'static str, body: Value| {
        let server = &server;
        async move {
            let body = serde_json::to_vec(&body).unwrap();
            let scope = server.id_scope();
            let query = "?api-version=2019-03-31";
            server
                .register_raw(&scope, registration_id, query, None, body)
                .await
        }
    };

    // A TPM device's first request: its keys in the body, no token.
    let tpm = json!({"endorsementKey": "AToAAQ==", "storageRootKey": "ARgAAQ=="});
    let (status, headers, body) =
        tokenless("tpm-dev", json!({"registrationId": "tpm-dev", "tpm": tpm})).await;
    // Nothing enrolls it: refused as unknown, saying what a TPM device needs.
    assert_azure_error("tpm device", status, &headers, &body, 404, 404201);
    common::assert_message_says(&body, "attestation.tpm");

    // No credential at all.
    let (status, headers, body) = tokenless("anon", json!({})).await;
    assert_azure_error("no credential", status, &headers, &body, 401, 401001);
}

#[tokio::test]
async fn x509_refusals_over_https_and_proof_of_possession() {
    use onramp_net::pki::dev_certs::{Issued, Validity};
    let server = Server::start("127.0.0.1:0");
    let cs = server.owner_connection_string().await;
    let root = Issued::root("PoP Root", Validity::days(30)).unwrap();
    let call = |method: Method, path: String, body: Option<Value>| {
        let cs = cs.clone();
        let server = &server;
        async move {
            server
                .service_call(
                    &cs,
                    method,
                    &format!("{path}?api-version=2021-10-01"),
                    body,
                    &[],
                )
                .await
        }
    };

    let by_ca = || {
        let group = json!({"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "pop-root"}}}});
        call(Method::PUT, "enrollmentGroups/by-ca".into(), Some(group))
    };
    let verify = |certificate: &Issued| {
        let proof = json!({"certificate": certificate.cert_pem});
        call(
            Method::POST,
            "certificates/pop-root/verify".into(),
            Some(proof),
        )
    };

    // A group may only refer to a CA certificate that exists…
    let (status, headers, v) = by_ca().await;
    assert_azure_error("unknown CA reference", status, &headers, &v, 400, 400004);
    let (status, _, v) = call(
        Method::PUT,
        "certificates/pop-root".into(),
        Some(json!({"certificate": root.cert_pem})),
    )
    .await;
    common::assert_ca_verified(status, &v, false);
    let (status, _, _) = by_ca().await;
    assert_eq!(status, 200);
    // …and its devices are refused until the CA is verified.
    let device = root.device("pop-dev", Validity::days(30)).unwrap();
    let register = |device: &Issued, id: &str| {
        let tls = x509_client(&server, device, &[]);
        let url = server.url(&format!(
            "{}/registrations/{id}/register?api-version=2021-06-01",
            server.id_scope()
        ));
        async move {
            let resp = tls.put(url).json(&json!({})).send().await.unwrap();
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            (status, headers, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, headers, v) = register(&device, "pop-dev").await;
    assert_azure_error(
        "CA reference to an unverified CA",
        status,
        &headers,
        &v,
        401,
        401004,
    );
    common::assert_message_says(&v, "not verified");

    // Proof of possession: a wrong code, a certificate from another CA, then the right one.
    let (status, _, code) = call(
        Method::POST,
        "certificates/pop-root/generateVerificationCode".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{code}");
    let code = common::text(&code["properties"]["verificationCode"]);
    let wrong_code = root.device("not-the-code", Validity::days(1)).unwrap();
    let (status, headers, v) = verify(&wrong_code).await;
    assert_azure_error("wrong verification code", status, &headers, &v, 400, 400011);
    let other_ca = Issued::root("Another Root", Validity::days(30)).unwrap();
    let not_signed = other_ca.device(&code, Validity::days(1)).unwrap();
    let (status, headers, v) = verify(&not_signed).await;
    assert_azure_error("not signed by the CA", status, &headers, &v, 400, 400011);
    common::assert_message_says(&v, "not signed by CA certificate 'pop-root'");
    let proof = root.device(&code, Validity::days(1)).unwrap();
    let (status, _, v) = verify(&proof).await;
    common::assert_ca_verified(status, &v, true);
    let (status, _, v) = register(&device, "pop-dev").await;
    common::assert_assigned(status, &v, 202);
    assert_eq!(
        v["registrationState"]["x509"]["enrollmentGroupId"], "by-ca",
        "{v}"
    );
    assert_eq!(
        v["registrationState"]["x509"]["certificateInfo"]["subjectName"], "CN=pop-dev",
        "{v}"
    );

    // The CN must be the registration ID; an expired certificate is refused.
    let (status, headers, v) = register(&device, "someone-else").await;
    assert_azure_error("CN differs", status, &headers, &v, 401, 401006);
    let now = time::OffsetDateTime::now_utc();
    let lapsed = Validity {
        not_before: now - time::Duration::days(9),
        not_after: now - time::Duration::days(1),
    };
    let expired = root.device("pop-old", lapsed).unwrap();
    let (status, headers, v) = register(&expired, "pop-old").await;
    assert_azure_error("expired", status, &headers, &v, 401, 401005);

    let (status, _, list) = call(Method::GET, "certificates".into(), None).await;
    assert_eq!(
        (status, list["value"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{list}"
    );
    let (status, _, _) = call(Method::DELETE, "certificates/pop-root".into(), None).await;
    assert_eq!(status, 204);
}

/// An HTTPS client presenting `device`'s certificate (and `intermediates`).
fn x509_client(
    server: &Server,
    device: &onramp_net::pki::dev_certs::Issued,
    intermediates: &[&onramp_net::pki::dev_certs::Issued],
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for ca in onramp_net::tls::certs_from_pem(&server.ca_pem).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut chain = device.cert_pem.clone();
    for i in intermediates {
        chain.push_str(&i.cert_pem);
    }
    let tls = rustls::ClientConfig::builder_with_provider(onramp_net::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            onramp_net::tls::certs_from_pem(&chain).unwrap(),
            onramp_net::tls::key_from_pem(&device.key_pem).unwrap(),
        )
        .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

#[tokio::test]
async fn demo_provisions_a_fleet_and_leaves_nothing_behind() {
    let out = onramp()
        .args(["demo", "--devices", "200", "--concurrency", "8"])
        .env_remove("ONRAMP_CONFIG")
        .output()
        .unwrap();
    let stdout = common::succeeded(&out);
    assert!(stdout.contains("200 of 200 devices assigned"), "{stdout}");
    let hub_lines = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("localhost:") && l.contains(" devices ("))
        .count();
    assert_eq!(hub_lines, 3, "three hubs share the devices: {stdout}");
    assert!(
        stdout.contains("\"telemetryIntervalSeconds\": 30"),
        "{stdout}"
    );
    // The directory that held every store is the one removed, and it is gone.
    let used = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Onramp demo — everything lives in "))
        .and_then(|l| l.strip_suffix(" and is removed at the end."))
        .unwrap();
    let removed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Stopped, and removed "))
        .unwrap()
        .trim_end_matches('.');
    assert_eq!(used, removed);
    assert!(!Path::new(removed).exists(), "{removed} is gone");
}

/// Whether `store` holds a record of kind `T` called `id` in the default service.
async fn holds<T: StoredRecord>(store: &dyn Store, id: &str) -> bool {
    let key = IdKey::of(id);
    store.get::<T>("default", &key).await.unwrap().is_some()
}

/// `onramp device provision` and `onramp bench` over AMQP and AMQP over
/// WebSockets (the server's HTTPS port takes AMQP by its protocol header).
#[tokio::test]
async fn the_cli_provisions_and_benches_over_amqp() {
    let server = Server::start("127.0.0.1:0");
    let group = server.cli_json(&["group", "create", "amqp-line"]);
    let group_key = common::text(&group["attestation"]["symmetricKey"]["primaryKey"]);
    for protocol in ["amqp", "amqp-ws"] {
        let id = format!("amqp-cli-{protocol}");
        let created = server.cli_json(&["enrollment", "create", &id]);
        let key = common::text(&created["attestation"]["symmetricKey"]["primaryKey"]);
        let result = server.cli_json(&provision(&id, &["--key", &key, "--protocol", protocol]));
        assert_eq!(result["status"], "assigned", "{protocol}: {result}");
        assert_eq!(result["registrationState"]["deviceId"], id.as_str());

        let unit = format!("amqp-line-{protocol}-1");
        let result = server.cli_json(&provision(
            &unit,
            &["--group-key", &group_key, "--protocol", protocol],
        ));
        assert_eq!(
            result["registrationState"]["symmetricKey"]["enrollmentGroupId"], "amqp-line",
            "{protocol}: {result}"
        );

        // A wrong key fails SASL; the command says so and exits non-zero.
        let wrong = onramp_core::keys::generate().expose().to_owned();
        let out = server.cli(&provision(&id, &["--key", &wrong, "--protocol", protocol]));
        assert!(!out.status.success(), "{protocol}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("refused"), "{protocol}: {stderr}");

        let out = server.cli(&[
            "bench",
            "--json",
            "--protocol",
            protocol,
            "--devices",
            "20",
            "--concurrency",
            "4",
            "--prefix",
            &format!("bench-{protocol}"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["assigned"], 20, "{protocol}: {summary}");
    }
}

#[tokio::test]
async fn bench_imports_individual_enrollments_and_paces_registrations() {
    let server = Server::start("127.0.0.1:0");
    let bench = |extra: &[&str]| {
        let out = server.cli(&[&["bench", "--json", "--concurrency", "8"], extra].concat());
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // 500 enrollments imported in bulk; 60 of them, spread over the list, register.
    let (summary, stderr) = bench(&[
        "--enrollments",
        "individual",
        "--population",
        "500",
        "--devices",
        "60",
        "--prefix",
        "imp",
    ]);
    assert!(
        stderr.contains("imported 500 individual enrollments"),
        "{stderr}"
    );
    assert_eq!(summary["assigned"], 60, "{summary}");
    let store = server.any_store().await;
    assert!(holds::<IndividualEnrollment>(&*store, "imp-0000499").await);
    // Spread over the whole list (every third of 500), not its first 60.
    assert!(holds::<RegistrationRecord>(&*store, "imp-0000177").await);
    assert!(!holds::<RegistrationRecord>(&*store, "imp-0000001").await);

    // The same enrollments again, without importing; paced at 100/s.
    let (summary, _) = bench(&[
        "--enrollments",
        "individual",
        "--population",
        "500",
        "--devices",
        "50",
        "--prefix",
        "imp",
        "--skip-create",
        "--rate",
        "100",
    ]);
    assert_eq!(summary["assigned"], 50, "{summary}");
    assert_eq!(summary["rateLimit"], 100.0);
    assert!(summary["seconds"].as_f64().unwrap() >= 0.45, "{summary}");

    // --first: a later run registers devices no earlier run did (the 61st in
    // the scattered order is enrollment 180).
    assert!(!holds::<RegistrationRecord>(&*store, "imp-0000180").await);
    let individual = |first: &'static str, devices: &'static str| {
        [
            "--enrollments",
            "individual",
            "--population",
            "500",
            "--prefix",
            "imp",
            "--skip-create",
            "--first",
            first,
            "--devices",
            devices,
        ]
    };
    let (summary, _) = bench(&individual("60", "20"));
    assert_eq!(summary["assigned"], 20, "{summary}");
    assert!(holds::<RegistrationRecord>(&*store, "imp-0000180").await);
    let out = server.cli(&[&["bench"][..], &individual("490", "20")].concat());
    common::assert_failed_saying(&out, "--first 490 plus --devices 20");

    // Importing the same prefix twice is refused with a hint.
    let out = server.cli(&[
        "bench",
        "--enrollments",
        "individual",
        "--devices",
        "5",
        "--prefix",
        "imp",
    ]);
    common::assert_failed_saying(&out, "--skip-create");
}

#[tokio::test]
async fn a_simulated_tpm_device_provisions_and_reaches_its_hub_with_the_key_its_tpm_opened() {
    let server = Server::start("127.0.0.1:0");
    let (_tpm_dir, tpm) = common::software_tpm_file();

    // The first run makes the software TPM; nothing enrolls it yet.
    let out = server.cli(&provision("sim-tpm-1", &["--tpm", &tpm]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("404201"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&tpm).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the TPM's private keys are the owner's alone"
        );
    }
    // It said how to enroll it: as an operator would, run that.
    let enroll = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("onramp enrollment create"))
        .unwrap_or_else(|| panic!("no enrollment command in: {stderr}"));
    let args: Vec<&str> = enroll.split_whitespace().skip(1).collect();
    server.cli_ok(&args);

    // Now the challenge, the assignment, and the hub reached with the key
    // the answer wrapped for this TPM.
    let out = server.cli(&[
        "device",
        "run",
        "--registration-id",
        "sim-tpm-1",
        "--tpm",
        &tpm,
        "--messages",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("sent 2 telemetry messages"), "{stderr}");
    let status: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .split("\n{\"desired\"")
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["status"], "assigned");
    assert!(
        status["registrationState"]["tpm"]["authenticationKey"].is_string(),
        "{status}"
    );

    // MQTT has no TPM challenge: the simulator says so before connecting.
    let out = server.cli(&provision(
        "sim-tpm-1",
        &["--tpm", &tpm, "--protocol", "mqtt"],
    ));
    common::assert_failed_saying(&out, "provisions over HTTPS");
}

#[tokio::test]
async fn registrations_and_group_device_keys_from_the_cli() {
    let server = Server::start("127.0.0.1:0");
    let group = server.cli_json(&["group", "create", "line-9"]);
    let group_key = common::text(&group["attestation"]["symmetricKey"]["primaryKey"]);

    // The device key a group gives a device: from the key, or from the group
    // read through the service API; the same the device derives itself.
    let derived = onramp_core::sas::derive_device_key(&group_key, "line-9-unit-1").unwrap();
    for args in [
        &[
            "group",
            "compute-device-key",
            "line-9-unit-1",
            "--key",
            &group_key,
        ][..],
        &[
            "group",
            "compute-device-key",
            "line-9-unit-1",
            "--group-id",
            "line-9",
        ][..],
    ] {
        assert_eq!(server.cli_ok(args).trim(), derived, "{args:?}");
    }
    for unit in ["line-9-unit-1", "line-9-unit-2"] {
        let key = onramp_core::sas::derive_device_key(&group_key, unit).unwrap();
        let result = server.cli_json(&provision(unit, &["--key", &key]));
        assert_eq!(result["status"], "assigned", "{unit}");
    }

    let shown = server.cli_json(&["registration", "show", "LINE-9-unit-1"]);
    assert_eq!(shown["registrationId"], "line-9-unit-1");
    assert_eq!(shown["status"], "assigned");
    let listed = server.cli_json(&["registration", "list", "--group-id", "line-9"]);
    let mut ids = common::registration_ids(&listed);
    ids.sort();
    assert_eq!(ids, ["line-9-unit-1", "line-9-unit-2"]);

    // Deleting is ETag-checked when an ETag is given.
    let out = server.cli(&[
        "registration",
        "delete",
        "line-9-unit-1",
        "--etag",
        "\"stale\"",
    ]);
    common::assert_failed_saying(&out, "412");
    let etag = common::text(&shown["etag"]);
    server.cli_ok(&["registration", "delete", "line-9-unit-1", "--etag", &etag]);
    let out = server.cli(&["registration", "show", "line-9-unit-1"]);
    common::assert_failed_saying(&out, "404203");
    let listed = server.cli_json(&["registration", "list", "--group-id", "line-9"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // A group without symmetric keys has no device keys to give.
    let out = server.cli(&[
        "group",
        "compute-device-key",
        "x",
        "--group-id",
        "no-such-group",
    ]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn enrollments_are_created_once_and_updated_under_their_etag() {
    let server = Server::start("127.0.0.1:0");
    let created = server.cli_json(&["enrollment", "create", "upd-1"]);
    let key = common::text(&created["attestation"]["symmetricKey"]["primaryKey"]);

    // Creating an ID that exists is refused unless it says --replace.
    let out = server.cli(&["enrollment", "create", "upd-1"]);
    common::assert_failed_saying(&out, "--replace");
    let replaced = server.cli_json(&["enrollment", "create", "upd-1", "--replace", "--key", &key]);
    assert_ne!(replaced["etag"], created["etag"]);

    // An update changes what it names and keeps the rest, keys included.
    let twin = r#"{"properties":{"desired":{"interval":30}}}"#;
    let updated = server.cli_json(&[
        "enrollment",
        "update",
        "upd-1",
        "--initial-twin",
        twin,
        "--disable",
    ]);
    assert_eq!(updated["provisioningStatus"], "disabled");
    assert_eq!(
        updated["initialTwin"]["properties"]["desired"]["interval"],
        30
    );
    let shown = server.cli_json(&["enrollment", "show", "upd-1", "--keys"]);
    assert_eq!(
        shown["attestation"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );
    let out = server.cli(&provision("upd-1", &["--key", &key]));
    assert!(
        !out.status.success(),
        "a disabled enrollment's device is refused"
    );

    // Under a stale ETag nothing changes.
    let stale = common::text(&created["etag"]);
    let out = server.cli(&[
        "enrollment",
        "update",
        "upd-1",
        "--enable",
        "--etag",
        &stale,
    ]);
    common::assert_failed_saying(&out, "412");
    assert_eq!(
        server.cli_json(&["enrollment", "show", "upd-1"])["provisioningStatus"],
        "disabled"
    );

    // Enabled again with a new key: the device signs with that one.
    let new_key = "bmV3LWtleS1mb3ItdXBkLTEtMDEyMzQ1Njc4OQ==";
    server.cli_json(&[
        "enrollment",
        "update",
        "upd-1",
        "--enable",
        "--key",
        new_key,
    ]);
    let result = server.cli_json(&provision("upd-1", &["--key", new_key]));
    assert_eq!(result["status"], "assigned");

    // Groups alike; an edge flag and a hub list.
    server.cli_json(&["group", "create", "upd-g"]);
    let updated = server.cli_json(&[
        "group",
        "update",
        "upd-g",
        "--edge",
        "true",
        "--allocation-policy",
        "hashed",
    ]);
    assert_eq!(updated["capabilities"]["iotEdge"], true);
    assert_eq!(updated["allocationPolicy"], "hashed");
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let run = |args: &[&str]| {
        let out = common::onramp().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for (shell, marker) in [
        ("bash", "complete -F _onramp"),
        ("zsh", "#compdef onramp"),
        ("fish", "complete -c onramp"),
    ] {
        let script = run(&["completions", shell]);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..script.len().min(200)]
        );
        // Every command, the newest included, completes.
        for command in ["serve", "registration", "enrollment", "compute-device-key"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let page = run(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH onramp 1"),
        "{}",
        &page[..200]
    );
    assert!(page.contains("registration"), "the page lists the commands");
    let out = common::onramp()
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[tokio::test]
async fn policies_are_created_rotated_and_deleted_from_the_cli() {
    let server = Server::start("127.0.0.1:0");
    let reader_cs = server
        .cli_ok(&["policy", "create", "reader", "--rights", "EnrollmentRead"])
        .trim()
        .to_owned();
    assert!(
        reader_cs.contains("SharedAccessKeyName=reader;"),
        "{reader_cs}"
    );
    let listed = server.cli_ok(&["policy", "list"]);
    assert!(
        listed.contains("reader") && listed.contains("EnrollmentRead"),
        "{listed}"
    );
    let out = server.cli(&["policy", "create", "reader", "--rights", "EnrollmentRead"]);
    assert!(
        !out.status.success(),
        "an existing policy is not overwritten"
    );

    // The reader reads, and may not write.
    let as_reader =
        |cs: &str, args: &[&str]| server.cli(&[args, &["--connection-string", cs]].concat());
    assert!(
        as_reader(&reader_cs, &["enrollment", "list"])
            .status
            .success()
    );
    let out = as_reader(&reader_cs, &["enrollment", "create", "by-reader"]);
    assert!(!out.status.success());

    // Both keys work; a new primary retires the old one and leaves the secondary.
    let shown = server.cli_json(&["policy", "show", "reader", "--keys", "-o", "json"]);
    assert_eq!(shown["rights"], "EnrollmentRead", "{shown}");
    assert_eq!(shown["primaryConnectionString"], reader_cs.as_str());
    let secondary_cs = common::text(&shown["secondaryConnectionString"]);
    // Without --keys, no connection string; the table says what it shows.
    let table = server.cli_ok(&["policy", "show", "reader"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("rights") && l.ends_with("EnrollmentRead")),
        "{table}"
    );
    assert!(!table.contains("SharedAccessKey="), "{table}");
    assert!(
        as_reader(&secondary_cs, &["enrollment", "list"])
            .status
            .success()
    );
    let new_cs = server
        .cli_ok(&["policy", "regenerate-key", "reader"])
        .trim()
        .to_owned();
    assert_ne!(new_cs, reader_cs);
    let out = as_reader(&reader_cs, &["enrollment", "list"]);
    assert!(!out.status.success(), "the old primary key is retired");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(as_reader(&new_cs, &["enrollment", "list"]).status.success());
    assert!(
        as_reader(&secondary_cs, &["enrollment", "list"])
            .status
            .success()
    );

    // Deleted, its keys open nothing; the owner policy cannot be deleted.
    server.cli_ok(&["policy", "delete", "reader"]);
    assert!(!as_reader(&new_cs, &["enrollment", "list"]).status.success());
    let out = server.cli(&["policy", "delete", "provisioningserviceowner"]);
    assert!(!out.status.success());
    let out = server.cli(&["policy", "delete", "reader"]);
    assert!(!out.status.success(), "deleting twice says there is none");
}

#[tokio::test]
async fn linked_hubs_and_ca_certificates_are_shown_one_at_a_time() {
    let server = Server::start("127.0.0.1:0");
    let key = server.enroll("shown-1", json!({})).await;
    server.assigned("shown-1", &key, &[]);
    let hub = server.embedded_hub().await;
    let shown = server.cli_json(&["linked-hub", "show", &hub.name.to_uppercase()]);
    assert_eq!(shown["name"], hub.name.as_str());
    assert_eq!(shown["kind"], "embedded");
    assert_eq!(shown["devices"], 1);
    assert!(shown["latency"].is_array(), "{shown}");
    let out = server.cli(&["linked-hub", "show", "no-such-hub.example.net"]);
    assert!(!out.status.success());

    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    // The test PKI needs no deployment: no --data-dir.
    let created = common::onramp()
        .args(["cert", "create-root", "--cn", "Shown Root", "--out"])
        .arg(&root)
        .output()
        .unwrap();
    common::succeeded(&created);

    let pem = temp.path().join("root.pem");
    server.cli_ok(&[
        "cert",
        "upload",
        "shown-root",
        "--file",
        pem.to_str().unwrap(),
    ]);
    let cert = server.cli_json(&["cert", "show", "shown-root"]);
    assert_eq!(cert["name"], "shown-root");
    assert!(
        cert["properties"]["subject"]
            .as_str()
            .unwrap()
            .contains("Shown Root"),
        "{cert}"
    );
    assert_eq!(cert["properties"]["isVerified"], false);
    let out = server.cli(&["cert", "show", "no-such-cert"]);
    common::assert_failed_saying(&out, "404");
}
