//! A fresh PostgreSQL database per test (and per benchmark), created through the server in
//! DATABASE_URL and dropped when the handle goes out of scope, so tests run in parallel and
//! never see each other's rows. Without DATABASE_URL the caller fails: never a silent pass.
#![allow(dead_code)] // each test target uses its own part of this module

use dag_operator::store::PgStore;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use uuid::Uuid;

/// The server the tests run against; panics with the way to get one when it is not set.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "DATABASE_URL is not set: the store tests need a real PostgreSQL. Start the local \
             plane and export its URL: `e2e/plane up && eval \"$(e2e/plane env)\"` \
             (scripts/test does this)"
        ),
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..authority_end], name);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A migrated store on a fresh database `dagop_test_<tag>_…` (the engine tests' helper).
/// The database outlives the store (a `PgStore` cannot carry a drop guard); it is removed by
/// the sweep of stale test databases that every [`TestDb::create`] runs.
pub async fn fresh_store(tag: &str) -> PgStore {
    let db = TestDb::create(tag).await;
    let store = db.migrated().await;
    db.keep();
    store
}

/// Test databases older than this are dropped by the next [`TestDb::create`]: the leftovers
/// of [`fresh_store`] and of killed test runs.
const STALE_AFTER_SECS: i64 = 3600;

/// A database created for one test; dropped (best effort) on drop, even after a panic.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// Creates `dagop_test_<tag>_<unix seconds>_<random>` on the DATABASE_URL server, after
    /// dropping test databases older than an hour.
    pub async fn create(tag: &str) -> TestDb {
        let admin_url = database_url();
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(30)
            .collect::<String>()
            .to_ascii_lowercase();
        let now = chrono::Utc::now().timestamp();
        let name = format!(
            "dagop_test_{tag}_{now}_{}",
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL: {e}"));
        sweep_stale(&mut conn, now).await;
        // `name` is generated above from [a-z0-9_] only: safe as an identifier
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let _ = conn.close().await;
        TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// Leaves the database in place (for the stale sweep) instead of dropping it now.
    pub fn keep(mut self) {
        self.name.clear();
    }

    /// A store on this database, not migrated.
    pub fn store(&self) -> PgStore {
        PgStore::connect_lazy(&self.url).expect("valid URL")
    }

    /// A store on this database with the schema in place.
    pub async fn migrated(&self) -> PgStore {
        let store = self.store();
        store.migrate().await.expect("migrations apply");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return; // kept
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // a thread of its own: Drop may run inside a runtime, where block_on is not allowed
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// Drops test databases whose embedded creation time is more than [`STALE_AFTER_SECS`] ago.
async fn sweep_stale(conn: &mut PgConnection, now: i64) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'dagop\\_test\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for name in names {
        let created = name.rsplit('_').nth(1).and_then(|t| t.parse::<i64>().ok());
        let safe = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if safe && created.is_some_and(|t| now - t > STALE_AFTER_SECS) {
            // `name` is [a-z0-9_] only (checked above): safe as an identifier
            let _ = conn
                .execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await;
        }
    }
}

/// Each try's number and state, in the order given (a run's tries, as the store returns them).
pub fn try_states(
    tries: &[dag_operator::store::TaskRow],
) -> Vec<(i32, dag_operator::store::TaskState)> {
    tries.iter().map(|t| (t.try_number, t.state)).collect()
}
