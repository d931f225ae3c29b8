//! A PostgreSQL database of a test's own: created empty on the server
//! `ONRAMP_TEST_POSTGRES` names (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped when the guard goes, also when the test fails.
//!
//! When no server answers, [`TestDatabase::create`] fails the test if
//! `ONRAMP_REQUIRE_POSTGRES=1` (as `scripts/test` sets it) and otherwise
//! says why it skips and returns `None`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;

/// The server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("ONRAMP_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn required() -> bool {
    std::env::var("ONRAMP_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A database of this test's own, dropped with the guard.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

/// `url` with its database path replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

async fn admin() -> Result<tokio_postgres::Client, String> {
    let url = server_url();
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("ONRAMP_TEST_POSTGRES {url}: {e}"))?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("no PostgreSQL at {url}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

impl TestDatabase {
    /// A fresh, empty database `onramp_test_<random>`; `None` (with a
    /// message) when there is no server and none is required.
    pub async fn create() -> Option<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let client = match admin().await {
            Ok(c) => c,
            Err(why) if required() => panic!("ONRAMP_REQUIRE_POSTGRES=1 but {why}"),
            Err(why) => {
                eprintln!("skipped: {why} (set ONRAMP_REQUIRE_POSTGRES=1 to fail instead)");
                return None;
            }
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "onramp_test_{}_{}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
        {
            panic!("creating the test database {name}: {e}");
        }
        Some(Self {
            url: with_database(&server_url(), &name),
            name,
        })
    }

    /// The URL of the database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    /// Drops the database (forcing out connections a store still holds),
    /// on a thread of its own: a drop cannot await, and may run inside or
    /// outside a runtime.
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let client = admin().await?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test database {}: {e}", self.name),
            Err(_) => eprintln!("could not drop the test database {}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{TestDatabase, admin, with_database};

    /// A test that fails still drops its database.
    #[tokio::test]
    async fn a_failing_test_leaves_no_database_behind() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let failed = tokio::spawn(async move {
            let Some(db) = TestDatabase::create().await else {
                return;
            };
            tx.send(db.name().to_owned()).unwrap();
            panic!("a test that fails while holding {}", db.name());
        })
        .await;
        let Ok(name) = rx.await else {
            return; // no server here: skipped
        };
        assert!(failed.is_err(), "the test failed");
        let left: i64 = admin()
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{name} was dropped");
    }

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "t1"), "postgres://h:1/t1");
    }
}
