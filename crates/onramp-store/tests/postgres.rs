//! The PostgreSQL store against the conformance suite, and what only a
//! shared database shows: concurrent writers on two nodes, each node seeing
//! the other's writes, migrations applied once by nodes starting together.
//!
//! Each test makes a database of its own on the server `ONRAMP_TEST_POSTGRES`
//! names (default 127.0.0.1:5432) and drops it after, also when it fails.
//! With no server the tests skip with a message, or fail when
//! `ONRAMP_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use onramp_core::ports::{
    Precondition, RegistrationLookup, RegistrationRecord, Store, StoreError, StoreExt,
    StoredRecord, TpmChallenge,
};
use onramp_model::{
    AttestationMechanism, DeviceRegistrationState, IdKey, IndividualEnrollment, RegistrationStatus,
    Secret, SymmetricKeyAttestation, UtcTime,
};
use onramp_store::postgres::PgOptions;
use onramp_store::{PgStore, Sealer};
use onramp_testkit::postgres::TestDatabase;
use onramp_testkit::{conformance, given, stored};
use tokio::sync::Barrier;

fn sealer() -> Arc<Sealer> {
    Arc::new(Sealer::new(&[7u8; 32], &[]).unwrap())
}

/// A node: a store with a pool of its own on the database.
async fn node(db: &TestDatabase) -> Arc<PgStore> {
    Arc::new(
        PgStore::open(db.url(), sealer(), PgOptions::default())
            .await
            .unwrap(),
    )
}

/// A plain client on the test database, to look at what the store wrote.
async fn raw(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Every case of the suite, each from an empty store (the tables are
/// emptied between cases), as `store_conformance!` lists them.
#[tokio::test]
async fn the_conformance_suite_passes_on_postgresql() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = node(&db).await;
    let client = raw(&db).await;
    macro_rules! cases {
        ($($case:ident,)+) => {$(
            client
                .batch_execute("TRUNCATE services, hub_latencies CASCADE")
                .await
                .unwrap();
            eprintln!("case {}", stringify!($case));
            conformance::$case(&*store).await;
        )+};
    }
    onramp_testkit::store_conformance!(each cases);
}

fn keyed_enrollment(id: &str) -> IndividualEnrollment {
    let mut e = conformance::enrollment(id);
    e.attestation = Some(AttestationMechanism {
        symmetric_key: Some(SymmetricKeyAttestation {
            primary_key: Some(Secret::new("cHJpbWFyeS1rZXktb2YtZGV2aWNl")),
            secondary_key: Some(Secret::new("c2Vjb25kYXJ5LWtleS1vZi1kZXZpY2U=")),
        }),
        ..conformance::enrollment(id).attestation.unwrap_or_default()
    });
    e
}

fn registration(id: &str, hub: &str) -> RegistrationRecord {
    let mut state = DeviceRegistrationState::new(id, RegistrationStatus::Assigned);
    state.assigned_hub = Some(hub.into());
    state.device_id = Some(id.into());
    RegistrationRecord {
        state,
        operation_id: format!("op-{id}"),
        enrollment_group_id: None,
        placement: None,
    }
}

async fn given_service(store: &dyn Store) {
    store
        .create_service(
            &conformance::service("t1", 1),
            &[conformance::owner("b3duZXIta2V5LTE=")],
        )
        .await
        .unwrap();
}

/// A test database (`None` where PostgreSQL is not at hand) and a node on
/// it that holds service `t1`.
async fn node_with_service() -> Option<(TestDatabase, Arc<PgStore>)> {
    let db = TestDatabase::create().await?;
    let store = node(&db).await;
    given_service(&*store).await;
    Some((db, store))
}

/// Runs `write` on `n` tasks released together; their results.
async fn together<T, F, Fut>(n: usize, write: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let fut = write(i);
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

/// Writers on two nodes with the same If-Match: exactly one wins each
/// round, the others are refused as stale; same for create-only writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_the_same_if_match_one_wins() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let nodes = [node(&db).await, node(&db).await];
    given_service(&*nodes[0]).await;
    let first = given(&*nodes[0], "t1", keyed_enrollment("dev")).await;
    let mut etag = first.etag.clone().unwrap();
    for round in 0..20 {
        let results = together(4, |i| {
            let store = nodes[i % 2].clone();
            let mut e = keyed_enrollment("dev");
            e.device_id = Some(format!("writer-{i}"));
            let condition = Precondition::IfMatch(etag.as_str().to_owned());
            async move { store.put("t1", e, condition, UtcTime::now()).await }
        })
        .await;
        let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, StoreError::PreconditionFailed(_)), "{e:?}");
            }
        }
        let winner = won[0].clone();
        let stored = stored::<IndividualEnrollment>(&*nodes[1], "t1", "dev")
            .await
            .unwrap();
        assert_eq!(
            stored.etag, winner.etag,
            "round {round}: the winner is stored"
        );
        assert_eq!(stored.device_id, winner.device_id);
        etag = winner.etag.unwrap();
    }

    // Registration records (If-Match on their ETag) and create-only writes.
    let reg = given(&*nodes[0], "t1", registration("reg", "hub-a")).await;
    let reg_etag = reg.state.etag.unwrap();
    let results = together(4, |i| {
        let store = nodes[i % 2].clone();
        let condition = Precondition::IfMatch(reg_etag.as_str().to_owned());
        async move {
            store
                .put(
                    "t1",
                    registration("reg", &format!("hub-{i}")),
                    condition,
                    UtcTime::now(),
                )
                .await
        }
    })
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    exactly_one_creates(&nodes, |i| {
        let mut e = keyed_enrollment("fresh");
        e.device_id = Some(format!("writer-{i}"));
        e
    })
    .await;
    // Create-only registrations (two nodes registering a new device).
    exactly_one_creates(&nodes, |i| registration("new-reg", &format!("hub-{i}"))).await;
}

/// `make(i)` written create-only by four writers on the two nodes at once:
/// exactly one creates it, the others are refused as already there.
async fn exactly_one_creates<T, F>(nodes: &[Arc<PgStore>; 2], make: F)
where
    T: StoredRecord + std::fmt::Debug + Send + 'static,
    F: Fn(usize) -> T,
{
    let results = together(4, |i| {
        let store = nodes[i % 2].clone();
        let record = make(i);
        async move {
            store
                .put("t1", record, Precondition::IfNotExists, UtcTime::now())
                .await
        }
    })
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(r, StoreError::AlreadyExists(_)), "{r:?}");
    }
}

/// Two nodes (two pools) on one database: what one writes, the other reads
/// at once, secrets unsealed; a delete on one is gone on the other.
#[tokio::test]
async fn two_nodes_see_each_others_writes() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (a, b) = (node(&db).await, node(&db).await);
    given_service(&*a).await;
    assert_eq!(b.service("t1").await.unwrap().unwrap().name, "t1");
    given(&*a, "t1", keyed_enrollment("dev-1")).await;
    given(&*a, "t1", conformance::hub("hub-a.example.net")).await;
    let inputs = b
        .registration_inputs(&RegistrationLookup::new(
            &conformance::service("t1", 1).id_scope.key(),
            &IdKey::of("DEV-1"),
            10,
        ))
        .await
        .unwrap()
        .expect("the service by its scope");
    let keys = inputs
        .enrollment
        .as_ref()
        .and_then(|e| e.attestation.as_ref())
        .and_then(|a| a.symmetric_key.as_ref())
        .expect("the keys, unsealed on the other node");
    assert_eq!(
        keys.primary_key.as_ref().map(Secret::expose),
        Some("cHJpbWFyeS1rZXktb2YtZGV2aWNl")
    );
    assert_eq!(inputs.linked_hubs.len(), 1);
    assert!(
        inputs.first_groups.is_none(),
        "an individual enrollment: no groups read"
    );
    assert!(inputs.previous.is_none());

    given(&*b, "t1", registration("dev-1", "hub-a.example.net")).await;
    let seen = stored::<RegistrationRecord>(&*a, "t1", "dev-1")
        .await
        .expect("node A reads node B's registration");
    assert_eq!(seen.operation_id, "op-dev-1");
    assert_eq!(
        a.count_devices_on_hub("t1", "HUB-A.example.net")
            .await
            .unwrap(),
        1
    );

    let challenge = TpmChallenge {
        registration_id: "dev-1".into(),
        key: Secret::new("aG1hYy1rZXk="),
        endorsement_key: "ek".into(),
        storage_root_key: "srk".into(),
        expires: UtcTime::now(),
        spent_by: None,
        enrollment_group_id: None,
    };
    a.put("t1", challenge.clone(), Precondition::None, UtcTime::now())
        .await
        .unwrap();
    let pending = stored::<TpmChallenge>(&*b, "t1", "dev-1")
        .await
        .expect("a TPM nonce sent by node A is pending on node B");
    assert_eq!(pending.key.expose(), "aG1hYy1rZXk=");

    b.delete::<IndividualEnrollment>("t1", &IdKey::of("dev-1"), Precondition::None)
        .await
        .unwrap();
    assert!(
        a.get::<IndividualEnrollment>("t1", &IdKey::of("dev-1"))
            .await
            .unwrap()
            .is_none()
    );
}

/// Secrets reach the database only sealed, in the embedded store's form.
#[tokio::test]
async fn secrets_are_sealed_at_rest() {
    let Some((db, store)) = node_with_service().await else {
        return;
    };
    given(&*store, "t1", keyed_enrollment("dev-1")).await;
    let client = raw(&db).await;
    let row = client
        .query_one("SELECT doc, keys_sealed FROM enrollments", &[])
        .await
        .unwrap();
    let doc: String = row.get(0);
    let sealed: Vec<u8> = row.get(1);
    assert!(!doc.contains("cHJpbWFyeS1rZXktb2YtZGV2aWNl"), "{doc}");
    assert!(sealed.starts_with(b"OR1"));
    let policy: Vec<u8> = client
        .query_one("SELECT keys_sealed FROM policies", &[])
        .await
        .unwrap()
        .get(0);
    assert!(policy.starts_with(b"OR1"));
    assert!(!String::from_utf8_lossy(&policy).contains("b3duZXIta2V5LTE="));
}

/// The PostgreSQL store's newest schema step (schema_v3.sql: diagnostics).
const NEWEST_STEP: i32 = 3;

/// Nodes that start together on an empty database apply each schema step
/// once, and all of them open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_when_nodes_open_together() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let opened = together(6, |_| {
        let url = url.clone();
        async move { PgStore::open(&url, sealer(), PgOptions::default()).await }
    })
    .await;
    for store in &opened {
        let store = store.as_ref().unwrap();
        assert_eq!(store.schema_version().await.unwrap(), NEWEST_STEP);
    }
    let client = raw(&db).await;
    let steps: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(steps, i64::from(NEWEST_STEP), "each step recorded once");
    // And a node that starts later finds nothing to do.
    let later = node(&db).await;
    assert_eq!(later.schema_version().await.unwrap(), NEWEST_STEP);
}

/// No database answering is `Unavailable` (a retryable 503) within the
/// connect deadline, not a hang; the URL's password is not in the message.
#[tokio::test]
async fn an_absent_database_is_unavailable_within_the_deadline() {
    let started = Instant::now();
    let err = PgStore::open(
        "postgres://onramp:hunter2@127.0.0.1:1/onramp",
        sealer(),
        PgOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A node whose master keys differ from the database's is refused at
/// start, naming the key it lacks; with the keys it opens.
#[tokio::test]
async fn a_node_with_other_master_keys_is_refused() {
    let Some((db, _first)) = node_with_service().await else {
        return;
    };
    let stranger = Arc::new(Sealer::new(&[9u8; 32], &[]).unwrap());
    let err = PgStore::open(db.url(), stranger, PgOptions::default())
        .await
        .unwrap_err();
    let expected = sealer().active_key_id();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains(&expected), "{err}");
    // A ring that rotated to a new key but keeps the old one still opens.
    let rotated = Arc::new(Sealer::new(&[9u8; 32], &[vec![7u8; 32]]).unwrap());
    let store = PgStore::open(db.url(), rotated, PgOptions::default())
        .await
        .unwrap();
    assert_eq!(store.policies("t1").await.unwrap().len(), 1);
}

/// `onramp keys rotate` on PostgreSQL: a node whose ring has a new active
/// key re-seals every value (the master key check too) in batches while
/// another node still writes under the old key; after a last pass nothing
/// is under the old key, and a node holding only the new key opens the
/// database and reads every secret.
#[tokio::test]
async fn every_secret_and_the_key_check_reseal_under_a_new_key() {
    use onramp_store::reseal::{Page, Resealable};
    let Some((db, old_node)) = node_with_service().await else {
        return;
    };
    together(300, |i| {
        let store = old_node.clone();
        async move {
            let e = keyed_enrollment(&format!("e-{i:03}"));
            store.put("t1", e, Precondition::None, UtcTime::now()).await
        }
    })
    .await
    .into_iter()
    .for_each(|r| {
        r.unwrap();
    });
    let rotated = Arc::new(Sealer::new(&[9u8; 32], &[vec![7u8; 32]]).unwrap());
    let new_node = PgStore::open(db.url(), rotated.clone(), PgOptions::default())
        .await
        .unwrap();
    let (old_id, new_id) = (sealer().active_key_id(), rotated.active_key_id());

    let reseal_all = || async {
        for column in new_node.sealed_columns() {
            let mut after = None;
            loop {
                let page = Page {
                    column,
                    after,
                    limit: 64,
                };
                let batch = new_node.reseal_batch(page).await.unwrap();
                match batch.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
    };
    reseal_all().await;
    // The old node writes on under its key; a second pass catches it.
    given(&*old_node, "t1", keyed_enrollment("late")).await;
    assert_eq!(new_node.key_counts().await.unwrap().get(&old_id), Some(&1));
    reseal_all().await;
    let counts = new_node.key_counts().await.unwrap();
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec![&new_id],
        "{counts:?}"
    );
    // owner policy, 301 enrollments, the master key check
    assert_eq!(counts[&new_id], 303, "{counts:?}");

    let only_new = Arc::new(Sealer::new(&[9u8; 32], &[]).unwrap());
    let fresh = PgStore::open(db.url(), only_new, PgOptions::default())
        .await
        .unwrap();
    let e: IndividualEnrollment = fresh.get("t1", &IdKey::of("e-299")).await.unwrap().unwrap();
    assert_eq!(e.attestation, keyed_enrollment("e-299").attestation);
    assert_eq!(fresh.policies("t1").await.unwrap().len(), 1);
}

/// Connections the database drops (a restart, a failover) are answered
/// `Unavailable` (a retryable 503), never a hang, and the pool makes new
/// ones: the store serves again without a restart of its own.
#[tokio::test]
async fn dropped_connections_are_unavailable_then_replaced() {
    let Some((db, store)) = node_with_service().await else {
        return;
    };
    // Hold several pooled connections open, then have the server end them all.
    let warm = together(4, |_| {
        let store = store.clone();
        async move { store.service("t1").await }
    })
    .await;
    assert!(warm.iter().all(Result::is_ok));
    let client = raw(&db).await;
    let ended: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended >= 1, "the store's connections were ended");
    let started = Instant::now();
    let mut answers = Vec::new();
    // At worst each pooled connection fails once (the pool holds at most 16).
    for _ in 0..20 {
        let answer = store.service("t1").await;
        let served = answer.is_ok();
        answers.push(answer);
        if served {
            break;
        }
    }
    eprintln!("answers after the connections ended: {answers:?}");
    for a in &answers {
        assert!(
            matches!(a, Ok(Some(_)) | Err(StoreError::Unavailable(_))),
            "{a:?}"
        );
    }
    assert!(
        matches!(answers.last(), Some(Ok(Some(_)))),
        "served again: {answers:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}
