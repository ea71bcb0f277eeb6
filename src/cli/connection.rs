//! Where PostgreSQL and Redis are, and how to reach them safely: URLs or parts, TLS
//! (`sslmode`, CA and client certificates; `rediss://`), and secrets read from files (CSI- or
//! Vault-mounted) instead of the environment. Files are read once, at start.

use std::path::Path;

use clap::Args;

use dag_operator::gate::{ClientCertificate, RedisTarget, RedisTls, SentinelTarget};

use super::CliError;

/// The `sslmode`s PostgreSQL clients know (libpq's names).
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

#[derive(Args, Debug, Clone, Default)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:pass@host:5432/dagop?sslmode=verify-full.
    /// Overrides the --db-* flags.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the PostgreSQL URL (e.g. a mounted Secret); read at start.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<String>,
    /// PostgreSQL host (used when no URL is given).
    #[arg(long, env = "DB_HOST")]
    pub db_host: Option<String>,
    /// PostgreSQL port.
    #[arg(long, env = "DB_PORT", default_value_t = 5432)]
    pub db_port: u16,
    /// PostgreSQL user.
    #[arg(long, env = "DB_USER")]
    pub db_user: Option<String>,
    /// PostgreSQL password.
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true)]
    pub db_password: Option<String>,
    /// A file holding the PostgreSQL password; read at start.
    #[arg(long, env = "DB_PASSWORD_FILE")]
    pub db_password_file: Option<String>,
    /// PostgreSQL database name.
    #[arg(long, env = "DB_NAME", default_value = "dagop")]
    pub db_name: String,
    /// TLS to PostgreSQL: disable, allow, prefer, require, verify-ca or verify-full (as
    /// libpq). A URL's own `sslmode` wins.
    #[arg(long, env = "DB_SSLMODE")]
    pub db_sslmode: Option<String>,
    /// CA certificate(s) (PEM) that sign the server's certificate (verify-ca, verify-full).
    #[arg(long, env = "DB_SSLROOTCERT")]
    pub db_sslrootcert: Option<String>,
    /// Client certificate (PEM), for servers that authenticate clients by certificate.
    #[arg(long, env = "DB_SSLCERT")]
    pub db_sslcert: Option<String>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "DB_SSLKEY")]
    pub db_sslkey: Option<String>,
}

/// A secret file's content, trimmed of surrounding whitespace (a trailing newline).
fn read_secret(flag: &str, path: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| CliError::usage(format!("cannot read {flag} {path}: {e}")))
}

/// A file a TLS setting names must be readable now (a clear error at start, not at the first
/// connection).
fn readable(flag: &str, path: &str) -> Result<(), CliError> {
    std::fs::File::open(Path::new(path))
        .map(|_| ())
        .map_err(|e| CliError::usage(format!("cannot read {flag} {path}: {e}")))
}

impl DatabaseArgs {
    /// The PostgreSQL URL: --database-url (DATABASE_URL) as given, else the content of
    /// --database-url-file, else one built from the --db-* flags with every part
    /// percent-encoded; then the TLS flags as URL parameters the URL does not set itself.
    /// None of the three given is a usage error.
    pub fn url(&self) -> Result<String, CliError> {
        let given = match self
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            Some(url) => Some(url.to_owned()),
            None => match &self.database_url_file {
                Some(path) => Some(read_secret("--database-url-file", path)?),
                None => None,
            },
        };
        let url = match given {
            Some(url) => url,
            None => self.url_from_parts()?,
        };
        self.with_tls(url)
    }

    fn url_from_parts(&self) -> Result<String, CliError> {
        let Some(host) = self.db_host.as_deref().filter(|h| !h.trim().is_empty()) else {
            return Err(CliError::usage(
                "no database configured: set --database-url (DATABASE_URL), \
                 --database-url-file or --db-host (DB_HOST)",
            ));
        };
        let password = match (&self.db_password, &self.db_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(read_secret("--db-password-file", path)?),
            (None, None) => None,
        };
        let mut url = String::from("postgres://");
        if self.db_user.is_some() || password.is_some() {
            url.push_str(&percent_encode(self.db_user.as_deref().unwrap_or("")));
            if let Some(password) = &password {
                url.push(':');
                url.push_str(&percent_encode(password));
            }
            url.push('@');
        }
        if host.starts_with('/') {
            url.push_str(&percent_encode(host)); // a Unix socket directory
        } else if host.contains(':') && !host.starts_with('[') {
            url.push_str(&format!("[{host}]")); // an IPv6 address
        } else {
            url.push_str(host);
        }
        url.push_str(&format!(
            ":{}/{}",
            self.db_port,
            percent_encode(&self.db_name)
        ));
        Ok(url)
    }

    /// Adds the TLS flags as URL parameters (those the URL names itself stay as they are).
    fn with_tls(&self, mut url: String) -> Result<String, CliError> {
        if let Some(mode) = &self.db_sslmode {
            if !SSL_MODES.contains(&mode.as_str()) {
                return Err(CliError::usage(format!(
                    "invalid --db-sslmode {mode:?}: expected one of {}",
                    SSL_MODES.join(", ")
                )));
            }
        }
        let files = [
            ("sslrootcert", "--db-sslrootcert", &self.db_sslrootcert),
            ("sslcert", "--db-sslcert", &self.db_sslcert),
            ("sslkey", "--db-sslkey", &self.db_sslkey),
        ];
        for (_, flag, path) in &files {
            if let Some(path) = path {
                readable(flag, path)?;
            }
        }
        let params = std::iter::once(("sslmode", &self.db_sslmode))
            .chain(files.iter().map(|(name, _, value)| (*name, *value)));
        for (name, value) in params {
            let Some(value) = value else { continue };
            let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
            if query
                .split('&')
                .any(|kv| kv.split('=').next() == Some(name))
            {
                continue;
            }
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("{name}={}", percent_encode(value)));
        }
        Ok(url)
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub(super) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Args, Debug, Clone, Default)]
pub struct RedisArgs {
    /// Redis URL, e.g. redis://host:6379/0, or rediss://user:password@host:6380/0 for TLS.
    /// Without it (and without --redis-host) an in-process gate serves a single active
    /// replica.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis host (used when --redis-url is not given).
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis ACL user (with --redis-password).
    #[arg(long, env = "REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Redis password.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// A file holding the Redis password; read at start.
    #[arg(long, env = "REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<String>,
    /// Connect to --redis-host over TLS (rediss://).
    #[arg(long, env = "REDIS_TLS")]
    pub redis_tls: bool,
    /// Redis database number.
    #[arg(long, env = "REDIS_DB", default_value_t = 0)]
    pub redis_db: u32,
    /// CA certificate (PEM) that signs the Redis server's certificate (rediss://; default:
    /// the system's roots).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<String>,
    /// Client certificate (PEM), for a Redis that checks clients' certificates.
    #[arg(long, env = "REDIS_CERT_FILE")]
    pub redis_cert_file: Option<String>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "REDIS_KEY_FILE")]
    pub redis_key_file: Option<String>,
    /// Prefix of every Redis key the operator writes.
    #[arg(long, env = "DAGOP_REDIS_KEY_PREFIX", default_value = "dagop")]
    pub redis_key_prefix: String,
    /// Redis Sentinels (host:port, comma-separated): the gate uses the master they name and
    /// follows a failover. The master is logged in to with --redis-username/--redis-password,
    /// --redis-db and --redis-tls (and the CA/client files). Takes precedence over
    /// --redis-url and --redis-host.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinel: Vec<String>,
    /// The master name the Sentinels monitor (with --redis-sentinel).
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,
}

impl RedisArgs {
    /// The TLS files, read now (a clear error at start).
    pub fn tls(&self) -> Result<RedisTls, CliError> {
        let read = |flag: &str, path: &Option<String>| -> Result<Option<Vec<u8>>, CliError> {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p)
                        .map_err(|e| CliError::usage(format!("cannot read {flag} {p}: {e}")))
                })
                .transpose()
        };
        let ca = read("--redis-ca-file", &self.redis_ca_file)?;
        let cert = read("--redis-cert-file", &self.redis_cert_file)?;
        let key = read("--redis-key-file", &self.redis_key_file)?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some(ClientCertificate { cert, key }),
            (None, None) => None,
            _ => {
                return Err(CliError::usage(
                    "--redis-cert-file and --redis-key-file go together",
                ));
            }
        };
        Ok(RedisTls { ca, client })
    }

    /// Where the gate's Redis is: the master --redis-sentinel names, else --redis-url, else
    /// a URL built from --redis-host and friends; None when none is given (the in-process
    /// gate then serves a single replica).
    pub fn target(&self) -> Result<Option<RedisTarget>, CliError> {
        if self.redis_sentinel.is_empty() {
            return Ok(self.url()?.map(RedisTarget::Url));
        }
        Ok(Some(RedisTarget::Sentinel(SentinelTarget {
            sentinels: self.redis_sentinel.clone(),
            master_name: self.redis_sentinel_master.clone(),
            username: self.redis_username.clone(),
            password: self.password()?,
            db: i64::from(self.redis_db),
            tls: self.redis_tls,
        })))
    }

    /// --redis-password, else the content of --redis-password-file.
    fn password(&self) -> Result<Option<String>, CliError> {
        Ok(match (&self.redis_password, &self.redis_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(read_secret("--redis-password-file", path)?),
            (None, None) => None,
        })
    }

    /// The Redis URL: --redis-url, else one built from --redis-host and friends; None when
    /// neither is given.
    pub fn url(&self) -> Result<Option<String>, CliError> {
        if let Some(url) = &self.redis_url {
            return Ok(Some(url.clone()));
        }
        let Some(host) = self.redis_host.as_ref() else {
            return Ok(None);
        };
        let password = self.password()?;
        let user = self.redis_username.as_deref().map(percent_encode);
        let auth = match (user, password) {
            (user, Some(p)) => format!("{}:{}@", user.unwrap_or_default(), percent_encode(&p)),
            (Some(user), None) => format!("{user}@"),
            (None, None) => String::new(),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let scheme = if self.redis_tls { "rediss" } else { "redis" };
        Ok(Some(format!(
            "{scheme}://{auth}{host}:{}/{}",
            self.redis_port, self.redis_db
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(content)
    }

    /// A file removed on drop (no tempfile dependency for one test helper).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(content: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "dagop-cli-test-{}-{}",
                    std::process::id(),
                    uuid::Uuid::new_v4().simple()
                ));
                std::fs::write(&path, content).expect("write a test file");
                TempPath(path)
            }
            pub fn as_str(&self) -> &str {
                self.0.to_str().unwrap_or_default()
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn secrets_come_from_files() {
        let url = file("postgres://u:secret@db:5432/runs\n");
        let a = DatabaseArgs {
            database_url_file: Some(url.as_str().into()),
            ..DatabaseArgs::default()
        };
        assert_eq!(a.url().unwrap(), "postgres://u:secret@db:5432/runs");
        let pw = file("p@ss\n");
        let a = DatabaseArgs {
            db_host: Some("db".into()),
            db_user: Some("u".into()),
            db_password_file: Some(pw.as_str().into()),
            db_name: "dagop".into(),
            db_port: 5432,
            ..DatabaseArgs::default()
        };
        assert_eq!(a.url().unwrap(), "postgres://u:p%40ss@db:5432/dagop");
        let missing = DatabaseArgs {
            database_url_file: Some("/nonexistent/url".into()),
            ..DatabaseArgs::default()
        };
        let e = missing.url().unwrap_err();
        assert_eq!(e.code, 2);
        assert!(
            e.message.contains("--database-url-file /nonexistent/url"),
            "{}",
            e.message
        );
        let r = RedisArgs {
            redis_host: Some("cache".into()),
            redis_port: 6380,
            redis_username: Some("dagop".into()),
            redis_password_file: Some(pw.as_str().into()),
            redis_tls: true,
            ..RedisArgs::default()
        };
        assert_eq!(
            r.url().unwrap().as_deref(),
            Some("rediss://dagop:p%40ss@cache:6380/0")
        );
    }

    #[test]
    fn sentinels_name_the_master_the_other_flags_log_in_to() {
        let pw = file("s3cret\n");
        let r = RedisArgs {
            redis_sentinel: vec!["s1:26379".into(), "s2:26379".into()],
            redis_sentinel_master: "dagop".into(),
            redis_username: Some("op".into()),
            redis_password_file: Some(pw.as_str().into()),
            redis_db: 3,
            redis_tls: true,
            ..RedisArgs::default()
        };
        let Ok(Some(RedisTarget::Sentinel(t))) = r.target() else {
            panic!("a Sentinel target");
        };
        assert_eq!(t.sentinels, ["s1:26379", "s2:26379"]);
        assert_eq!(t.master_name, "dagop");
        assert_eq!(t.username.as_deref(), Some("op"));
        assert_eq!(t.password.as_deref(), Some("s3cret"));
        assert_eq!((t.db, t.tls), (3, true));
        let plain = RedisArgs {
            redis_url: Some("redis://cache:6379/0".into()),
            ..RedisArgs::default()
        };
        assert!(
            matches!(plain.target(), Ok(Some(RedisTarget::Url(u))) if u == "redis://cache:6379/0")
        );
        assert!(matches!(RedisArgs::default().target(), Ok(None)));
    }

    #[test]
    fn tls_flags_become_url_parameters_the_url_does_not_set() {
        let ca = file("-----BEGIN CERTIFICATE-----\n");
        let a = DatabaseArgs {
            database_url: Some("postgres://u@db/runs".into()),
            db_sslmode: Some("verify-full".into()),
            db_sslrootcert: Some(ca.as_str().into()),
            ..DatabaseArgs::default()
        };
        let url = a.url().unwrap();
        assert!(
            url.starts_with("postgres://u@db/runs?sslmode=verify-full&sslrootcert="),
            "{url}"
        );
        let own = DatabaseArgs {
            database_url: Some("postgres://u@db/runs?sslmode=require".into()),
            db_sslmode: Some("verify-full".into()),
            ..DatabaseArgs::default()
        };
        assert_eq!(own.url().unwrap(), "postgres://u@db/runs?sslmode=require");
        let bad = DatabaseArgs {
            database_url: Some("postgres://u@db/runs".into()),
            db_sslmode: Some("always".into()),
            ..DatabaseArgs::default()
        };
        assert!(bad.url().unwrap_err().message.contains("verify-full"));
        let unreadable = DatabaseArgs {
            database_url: Some("postgres://u@db/runs".into()),
            db_sslrootcert: Some("/nonexistent/ca.crt".into()),
            ..DatabaseArgs::default()
        };
        assert!(
            unreadable
                .url()
                .unwrap_err()
                .message
                .contains("cannot read --db-sslrootcert")
        );
    }
}
