//! How the Redis gate reaches its server: one address, reconnected by itself after a failure;
//! or the master a set of Redis Sentinels names, looked up again whenever the connection fails
//! or the server stops taking writes (a failover promoted another one).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, RedisError, TlsMode};

use super::GateError;
use super::redis::RedisTls;

/// How long one connection attempt may take before the call fails as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command may wait for its answer before the call fails as unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connection attempts per reconnect (then the waiting calls fail; the next call starts a new
/// reconnect). Few, so that callers learn of an outage in about a second, not after a minute.
const CONNECT_RETRIES: usize = 2;
/// How long asking the Sentinels for the master (and checking its role) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the gate's Redis is.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    /// `redis://[user:password@]host:port/db` or `rediss://…`
    Url(String),
    /// The master of a group watched by Sentinels.
    Sentinel(SentinelTarget),
}

/// A master by name, found through Sentinels; how to log in to it.
#[derive(Clone, Debug)]
pub struct SentinelTarget {
    /// `host:port` of each Sentinel (asked in order)
    pub sentinels: Vec<String>,
    /// the name the Sentinels monitor the master under
    pub master_name: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// connect to the master over TLS (the Sentinels themselves are reached without)
    pub tls: bool,
}

/// A connection of the link, and which master it goes to.
pub(super) struct Conn {
    pub manager: ConnectionManager,
    generation: u64,
}

/// The gate's connection: cheap to clone, shared by clones.
#[derive(Clone)]
pub(super) enum Link {
    Direct(ConnectionManager),
    Sentinel(Arc<SentinelLink>),
}

pub(super) struct SentinelLink {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    master_name: String,
    current: std::sync::RwLock<Option<Master>>,
    generations: AtomicU64,
}

#[derive(Clone)]
struct Master {
    manager: ConnectionManager,
    generation: u64,
    address: String,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(CONNECT_RETRIES)
        .set_max_delay(Duration::from_millis(500))
}

fn certificates(tls: &RedisTls) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls.client.as_ref().map(|c| redis::ClientTlsConfig {
            client_cert: c.cert.clone(),
            client_key: c.key.clone(),
        }),
        root_cert: tls.ca.clone(),
    }
}

/// `host:port` (an IPv6 host in brackets) as a Sentinel address.
fn sentinel_address(text: &str) -> Result<ConnectionAddr, GateError> {
    let invalid = || GateError::Invalid(format!("Sentinel address {text:?}: want host:port"));
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid());
    }
    Ok(ConnectionAddr::Tcp(host.to_string(), port))
}

impl Link {
    /// A link to `target`, without touching the network (the first call connects).
    pub fn new(target: &RedisTarget, tls: &RedisTls) -> Result<Self, GateError> {
        match target {
            RedisTarget::Url(url) => {
                let client = if tls.is_empty() {
                    redis::Client::open(url.as_str())
                } else {
                    redis::Client::build_with_tls(url.as_str(), certificates(tls))
                }
                .map_err(|e| GateError::Invalid(format!("Redis URL: {e}")))?;
                let manager = ConnectionManager::new_lazy_with_config(client, manager_config())
                    .map_err(|e| GateError::Invalid(format!("Redis client: {e}")))?;
                Ok(Link::Direct(manager))
            }
            RedisTarget::Sentinel(s) => Ok(Link::Sentinel(Arc::new(SentinelLink::new(s, tls)?))),
        }
    }

    /// A connection to the server (through the Sentinels: to the master they name now).
    pub async fn conn(&self) -> Result<Conn, GateError> {
        match self {
            Link::Direct(manager) => Ok(Conn {
                manager: manager.clone(),
                generation: 0,
            }),
            Link::Sentinel(link) => link.conn().await,
        }
    }

    /// Passes `result` on; an answer that says the master is gone or no longer a master
    /// makes the next call ask the Sentinels again.
    pub fn observe<T>(&self, conn: &Conn, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let (Link::Sentinel(link), Err(e)) = (self, &result)
            && super::redis::is_unavailable(e)
        {
            link.forget(conn.generation, e);
        }
        result
    }
}

impl SentinelLink {
    fn new(target: &SentinelTarget, tls: &RedisTls) -> Result<Self, GateError> {
        if target.sentinels.is_empty() {
            return Err(GateError::Invalid("no Sentinel address".into()));
        }
        let addresses = target
            .sentinels
            .iter()
            .map(|s| sentinel_address(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder =
            SentinelClientBuilder::new(addresses, &target.master_name, SentinelServerType::Master)
                .map_err(|e| GateError::Invalid(format!("Sentinel: {e}")))?
                .set_client_to_redis_db(target.db);
        if let Some(user) = &target.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &target.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if target.tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if !tls.is_empty() {
                builder = builder.set_client_to_redis_certificates(certificates(tls));
            }
        }
        let sentinel = builder
            .build()
            .map_err(|e| GateError::Invalid(format!("Sentinel: {e}")))?;
        Ok(SentinelLink {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master_name: target.master_name.clone(),
            current: std::sync::RwLock::new(None),
            generations: AtomicU64::new(1),
        })
    }

    fn current(&self) -> Option<Master> {
        self.current.read().ok().and_then(|m| m.clone())
    }

    async fn conn(&self) -> Result<Conn, GateError> {
        if let Some(m) = self.current() {
            return Ok(Conn {
                manager: m.manager,
                generation: m.generation,
            });
        }
        // one lookup at a time; whoever waited finds the master the first one found
        let mut sentinel = self.sentinel.lock().await;
        if let Some(m) = self.current() {
            return Ok(Conn {
                manager: m.manager,
                generation: m.generation,
            });
        }
        let client = tokio::time::timeout(LOOKUP_TIMEOUT, sentinel.async_get_client())
            .await
            .map_err(|_| {
                GateError::Unavailable(format!(
                    "no answer from the Sentinels for master {:?} within {LOOKUP_TIMEOUT:?}",
                    self.master_name
                ))
            })?
            .map_err(|e| {
                GateError::Unavailable(format!(
                    "Sentinels name no reachable master {:?}: {e}",
                    self.master_name
                ))
            })?;
        let address = client.get_connection_info().addr().to_string();
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config())
            .map_err(|e| GateError::Invalid(format!("Redis client: {e}")))?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(master = %self.master_name, %address, "Redis master found through Sentinel");
        if let Ok(mut current) = self.current.write() {
            *current = Some(Master {
                manager: manager.clone(),
                generation,
                address,
            });
        }
        drop(sentinel);
        Ok(Conn {
            manager,
            generation,
        })
    }

    /// Drops the master `generation` (not a newer one another call already found).
    fn forget(&self, generation: u64, error: &RedisError) {
        if let Ok(mut current) = self.current.write()
            && current.as_ref().is_some_and(|m| m.generation == generation)
            && let Some(old) = current.take()
        {
            tracing::warn!(
                master = %self.master_name,
                address = %old.address,
                %error,
                "Redis master unreachable or demoted: asking the Sentinels again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_addresses_are_host_and_port() {
        assert!(matches!(
            sentinel_address("10.0.0.1:26379"),
            Ok(ConnectionAddr::Tcp(h, 26379)) if h == "10.0.0.1"
        ));
        assert!(matches!(
            sentinel_address("[::1]:26379"),
            Ok(ConnectionAddr::Tcp(h, 26379)) if h == "::1"
        ));
        for bad in ["sentinel", "host:", ":26379", "host:port"] {
            assert!(
                matches!(sentinel_address(bad), Err(GateError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_link_is_made_without_the_network() {
        let target = RedisTarget::Sentinel(SentinelTarget {
            sentinels: vec!["127.0.0.1:1".into()],
            master_name: "dagop".into(),
            username: None,
            password: Some("secret".into()),
            db: 0,
            tls: false,
        });
        let link = Link::new(&target, &RedisTls::default()).expect("lazy");
        // nobody listens on port 1: the call fails as unavailable, it does not hang
        assert!(matches!(link.conn().await, Err(GateError::Unavailable(_))));
    }
}
