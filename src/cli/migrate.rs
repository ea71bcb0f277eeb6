//! `dag-operator migrate`: apply the embedded database migrations and exit. Also the
//! database plumbing `runs` shares: a runtime, a store that is known to answer, and one-line
//! errors that never show the password.

use dag_operator::store::{PgStore, StoreError};

use super::{CliError, DatabaseArgs};

pub fn run(args: &DatabaseArgs) -> Result<(), CliError> {
    let url = args.url()?;
    block_on(async {
        let store = open(&url).await?;
        let applied = store
            .migrate_report()
            .await
            .map_err(|e| store_error(&store, "cannot migrate", e))?;
        if applied.is_empty() {
            println!("up to date");
        } else {
            for m in &applied {
                println!("applied {} {}", m.version, m.description);
            }
        }
        Ok(())
    })
}

/// Runs a subcommand's async body on a single-threaded runtime.
pub(super) fn block_on<T>(body: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))?
        .block_on(body)
}

/// A store for `url` that has answered one connection: a malformed URL is a usage error
/// (exit 2), an unreachable server a runtime error (exit 1) that says why.
pub(super) async fn open(url: &str) -> Result<PgStore, CliError> {
    // sqlx's URL errors do not repeat the URL, so the password stays out of the message
    let store = PgStore::connect_lazy(url)
        .map_err(|e| CliError::usage(format!("invalid database URL: {}", cause(&e))))?;
    store.probe().await.map_err(|e| {
        CliError::runtime(format!(
            "cannot reach PostgreSQL at {}: {}",
            store.target(),
            cause(&e)
        ))
    })?;
    Ok(store)
}

/// A store failure after the server answered, with a hint when the schema is missing.
pub(super) fn store_error(store: &PgStore, doing: &str, e: StoreError) -> CliError {
    let target = store.target();
    match &e {
        // undefined_table
        StoreError::Database(sqlx::Error::Database(db))
            if db.code().as_deref() == Some("42P01") =>
        {
            CliError::runtime(format!(
                "{doing}: the database {target} has no dag-operator tables: \
                 run `dag-operator migrate` first"
            ))
        }
        StoreError::Database(sqlx::Error::PoolTimedOut) => {
            CliError::runtime(format!("{doing}: PostgreSQL at {target} stopped answering"))
        }
        _ => CliError::runtime(format!("{doing}: {}", cause(&e))),
    }
}

/// The innermost useful text of a store error, on one line.
fn cause(e: &StoreError) -> String {
    match e {
        StoreError::Database(sqlx::Error::Configuration(inner)) => inner.to_string(),
        StoreError::Database(sqlx::Error::Io(inner)) => inner.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::postgres::PgConnectOptions;

    use super::super::DatabaseArgs;

    fn args() -> DatabaseArgs {
        DatabaseArgs {
            database_url: None,
            db_host: None,
            db_port: 5432,
            db_user: None,
            db_password: None,
            db_name: "dagop".into(),
            ..DatabaseArgs::default()
        }
    }

    #[test]
    fn the_url_wins_over_the_parts() {
        let a = DatabaseArgs {
            database_url: Some("postgres://a@b/c".into()),
            db_host: Some("elsewhere".into()),
            ..args()
        };
        assert_eq!(a.url().unwrap(), "postgres://a@b/c");
    }

    #[test]
    fn no_url_and_no_host_is_a_usage_error() {
        let e = args().url().unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("--database-url") && e.message.contains("--db-host"));
        let blank = DatabaseArgs {
            database_url: Some(" ".into()),
            ..args()
        };
        assert_eq!(blank.url().unwrap_err().code, 2);
    }

    #[test]
    fn parts_are_percent_encoded_and_round_trip() {
        let a = DatabaseArgs {
            db_host: Some("db.example.com".into()),
            db_port: 6543,
            db_user: Some("dag op@corp".into()),
            db_password: Some("p@ss:w/rd?#%é".into()),
            db_name: "runs/db".into(),
            ..args()
        };
        let url = a.url().unwrap();
        assert!(url.contains(":p%40ss%3Aw%2Frd%3F%23%25%C3%A9@"), "{url}");
        let o = PgConnectOptions::from_str(&url).expect("parses");
        assert_eq!(o.get_host(), "db.example.com");
        assert_eq!(o.get_port(), 6543);
        assert_eq!(o.get_username(), "dag op@corp");
        assert_eq!(o.get_database(), Some("runs/db"));
    }

    #[test]
    fn ipv6_hosts_and_socket_directories() {
        let v6 = DatabaseArgs {
            db_host: Some("::1".into()),
            db_user: Some("u".into()),
            ..args()
        };
        assert_eq!(v6.url().unwrap(), "postgres://u@[::1]:5432/dagop");
        let socket = DatabaseArgs {
            db_host: Some("/var/run/postgresql".into()),
            ..args()
        };
        let o = PgConnectOptions::from_str(&socket.url().unwrap()).expect("parses");
        assert_eq!(
            o.get_socket().map(|p| p.display().to_string()).as_deref(),
            Some("/var/run/postgresql")
        );
    }
}
