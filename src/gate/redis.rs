//! The Redis gate (SPEC §7): one sorted set per semaphore, `<prefix>:sem:<key>`, whose members
//! are the holders scored by lease expiry in milliseconds of Redis server time, and a hash
//! `<prefix>:sem:<key>:w` of holder → weight for holders of weight > 1. Only the Lua scripts in
//! `gate/lua/` change them; see docs/GATE.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, Script, ServerErrorKind};

use super::link::{Link, RedisTarget};
use super::{
    Claim, Gate, GateError, Grant, check_acquire, check_claim, check_holder, check_key, check_ttl,
};

/// The default `--redis-key-prefix`.
pub const DEFAULT_PREFIX: &str = "dagop";

/// Most holders renewed by one script call (bounds how long one call holds Redis).
const RENEW_CHUNK: usize = 1000;

struct Scripts {
    acquire_all: Script,
    renew: Script,
    release: Script,
    usage: Script,
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            acquire_all: Script::new(include_str!("lua/acquire_all.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            usage: Script::new(include_str!("lua/usage.lua")),
        }
    }
}

/// Semaphores in Redis, shared by every replica that uses the same server and prefix. Cheap to
/// clone: clones share one multiplexed connection, re-established by itself after a failure
/// (through Sentinels: to the master they name then).
#[derive(Clone)]
pub struct RedisGate {
    link: Link,
    prefix: Arc<str>,
    lease_ttl: Duration,
    lease_ttl_ms: u64,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGate")
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// TLS material for `rediss://` (PEM): none is the system's roots and no client certificate.
#[derive(Clone, Debug, Default)]
pub struct RedisTls {
    /// the CA that signs the server's certificate
    pub ca: Option<Vec<u8>>,
    pub client: Option<ClientCertificate>,
}

/// A client certificate and its key (PEM).
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl RedisTls {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }
}

impl RedisGate {
    /// Connects to `url` (`redis://[user:password@]host:port/db`) and checks the server
    /// answers. Keys are `<prefix>:sem:<key>`; leases last `lease_ttl` (at least 1 ms).
    /// An unreachable server is [`GateError::Unavailable`]; a malformed URL is
    /// [`GateError::Invalid`].
    pub async fn connect(url: &str, prefix: &str, lease_ttl: Duration) -> Result<Self, GateError> {
        let gate = Self::connect_lazy(url, prefix, lease_ttl)?;
        gate.ping().await?;
        Ok(gate)
    }

    /// Like [`RedisGate::connect`] but without touching the network: the connection is made
    /// by the first call, so an operator can start while Redis is down (its calls fail with
    /// [`GateError::Unavailable`] until Redis is back). Must be called within a Tokio runtime.
    pub fn connect_lazy(url: &str, prefix: &str, lease_ttl: Duration) -> Result<Self, GateError> {
        Self::connect_lazy_with(url, &RedisTls::default(), prefix, lease_ttl)
    }

    /// [`RedisGate::connect_lazy`] with TLS material for a `rediss://` URL: a CA that signs
    /// the server's certificate (else the system's roots), a client certificate.
    pub fn connect_lazy_with(
        url: &str,
        tls: &RedisTls,
        prefix: &str,
        lease_ttl: Duration,
    ) -> Result<Self, GateError> {
        Self::connect_lazy_to(&RedisTarget::Url(url.to_string()), tls, prefix, lease_ttl)
    }

    /// [`RedisGate::connect_lazy_with`] for a URL or the master of a Sentinel group.
    pub fn connect_lazy_to(
        target: &RedisTarget,
        tls: &RedisTls,
        prefix: &str,
        lease_ttl: Duration,
    ) -> Result<Self, GateError> {
        check_ttl(lease_ttl)?;
        let lease_ttl_ms = u64::try_from(lease_ttl.as_millis())
            .map_err(|_| GateError::Invalid(format!("lease TTL {lease_ttl:?} is too long")))?;
        Ok(RedisGate {
            link: Link::new(target, tls)?,
            prefix: prefix.into(),
            lease_ttl,
            lease_ttl_ms,
            scripts: Arc::new(Scripts::load()),
        })
    }

    /// The key prefix (`--redis-key-prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of the sorted set behind logical `key`: `<prefix>:sem:<key>`.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}:sem:{key}", self.prefix)
    }

    /// The Redis key of the weights hash behind logical `key`: `<prefix>:sem:<key>:w`.
    pub fn weights_key(&self, key: &str) -> String {
        format!("{}:sem:{key}:w", self.prefix)
    }

    /// Runs `script` with the semaphore's two keys and `args`. (`invoke_async` sends EVALSHA
    /// and loads the script on NOSCRIPT, e.g. after a Redis restart.)
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[&[u8]],
    ) -> Result<T, GateError> {
        let mut invocation = script.key(self.redis_key(key));
        invocation.key(self.weights_key(key));
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.link.conn().await?;
        let answer = invocation.invoke_async(&mut conn.manager).await;
        self.link.observe(&conn, answer).map_err(map_err)
    }

    fn acquire_all_cmd(&self, claim: &Claim) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.acquire_all.get_hash())
            .arg(claim.slots.len() * 2);
        for slot in &claim.slots {
            cmd.arg(self.redis_key(&slot.key))
                .arg(self.weights_key(&slot.key));
        }
        cmd.arg(&claim.holder).arg(self.lease_ttl_ms);
        for slot in &claim.slots {
            cmd.arg(slot.weight).arg(slot.limit);
        }
        cmd
    }

    /// Sends a pipeline of EVALSHA calls of `script`; if Redis lost its script cache (a
    /// restart), loads the script and sends the pipeline again (every script here may run
    /// twice: acquiring or renewing again is idempotent).
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<T>, GateError> {
        let mut conn = self.link.conn().await?;
        let first = pipe.query_async(&mut conn.manager).await;
        match self.link.observe(&conn, first) {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let loaded = script.prepare_invoke().load_async(&mut conn.manager).await;
                self.link.observe(&conn, loaded).map_err(map_err)?;
                let again = pipe.query_async(&mut conn.manager).await;
                self.link.observe(&conn, again).map_err(map_err)
            }
            other => other.map_err(map_err),
        }
    }

    /// One renew call for many holders of one semaphore.
    fn renew_cmd(&self, key: &str, holders: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.renew.get_hash())
            .arg(2)
            .arg(self.redis_key(key))
            .arg(self.weights_key(key))
            .arg(self.lease_ttl_ms);
        for holder in holders {
            cmd.arg(*holder);
        }
        cmd
    }
}

/// Unreachable, slow or not-serving-writes servers are [`GateError::Unavailable`]; other
/// errors Redis answers with are [`GateError::Backend`].
fn map_err(e: RedisError) -> GateError {
    if is_unavailable(&e) {
        GateError::Unavailable(e.to_string())
    } else {
        GateError::Backend(e.to_string())
    }
}

/// Unreachable, slow, or not serving writes (a replica, a master that lost its replicas).
pub(super) fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

impl Gate for RedisGate {
    /// A claim of one semaphore (`acquire_all.lua`, the only admission script).
    async fn acquire(
        &self,
        key: &str,
        holder: &str,
        weight: u32,
        limit: u32,
    ) -> Result<bool, GateError> {
        check_acquire(key, holder, weight)?;
        let (ttl, weight, limit) = (
            self.lease_ttl_ms.to_string(),
            weight.to_string(),
            limit.to_string(),
        );
        let args: [&[u8]; 4] = [
            holder.as_bytes(),
            ttl.as_bytes(),
            weight.as_bytes(),
            limit.as_bytes(),
        ];
        let refused_at: i64 = self.run(&self.scripts.acquire_all, key, &args).await?;
        Ok(refused_at == 0)
    }

    /// One pipeline of EVALSHA acquire_all calls, one per claim.
    async fn acquire_all(&self, claims: &[Claim]) -> Result<Vec<Grant>, GateError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for claim in claims {
            check_claim(claim)?;
            pipe.add_command(self.acquire_all_cmd(claim));
        }
        let answers: Vec<i64> = self.pipeline(&self.scripts.acquire_all, &pipe).await?;
        if answers.len() != claims.len() {
            return Err(GateError::Backend(format!(
                "acquire pipeline: {} answers for {} claims",
                answers.len(),
                claims.len()
            )));
        }
        answers
            .into_iter()
            .map(|a| match usize::try_from(a) {
                Ok(0) => Ok(Grant::Granted),
                Ok(i) => Ok(Grant::Refused(i - 1)),
                Err(_) => Err(GateError::Backend(format!("acquire_all answered {a}"))),
            })
            .collect()
    }

    async fn renew(&self, key: &str, holder: &str) -> Result<bool, GateError> {
        check_key(key)?;
        check_holder(holder)?;
        let ttl = self.lease_ttl_ms.to_string();
        let args: [&[u8]; 2] = [ttl.as_bytes(), holder.as_bytes()];
        let renewed: Vec<i64> = self.run(&self.scripts.renew, key, &args).await?;
        Ok(renewed.first() == Some(&1))
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), GateError> {
        check_key(key)?;
        check_holder(holder)?;
        let _removed: i64 = self
            .run(&self.scripts.release, key, &[holder.as_bytes()])
            .await?;
        Ok(())
    }

    async fn usage(&self, key: &str) -> Result<u32, GateError> {
        check_key(key)?;
        let used: i64 = self.run(&self.scripts.usage, key, &[]).await?;
        Ok(u32::try_from(used.max(0)).unwrap_or(u32::MAX))
    }

    /// One pipeline of EVALSHA renew calls, one per semaphore (in chunks of
    /// [`RENEW_CHUNK`] holders), so renewing 10,000 leases of one limit is a handful of calls.
    /// If Redis lost its script cache (a restart), the script is loaded and the whole pipeline
    /// sent again: renewing twice is harmless.
    async fn renew_all(&self, leases: &[(String, String)]) -> Result<Vec<bool>, GateError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        // the leases of each semaphore, by their index in `leases`
        let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (key, holder)) in leases.iter().enumerate() {
            check_key(key)?;
            check_holder(holder)?;
            by_key.entry(key.as_str()).or_default().push(i);
        }
        let mut pipe = redis::pipe();
        let mut calls: Vec<&[usize]> = Vec::new();
        for (key, indices) in &by_key {
            for chunk in indices.chunks(RENEW_CHUNK) {
                let holders: Vec<&str> = chunk.iter().map(|&i| leases[i].1.as_str()).collect();
                pipe.add_command(self.renew_cmd(key, &holders));
                calls.push(chunk);
            }
        }
        let answers: Vec<Vec<i64>> = self.pipeline(&self.scripts.renew, &pipe).await?;
        let mut renewed = vec![false; leases.len()];
        let mut answered = 0;
        for (chunk, answer) in calls.iter().zip(&answers) {
            for (&i, r) in chunk.iter().zip(answer) {
                renewed[i] = *r == 1;
                answered += 1;
            }
        }
        if answered != leases.len() {
            return Err(GateError::Backend(format!(
                "renew pipeline: {answered} answers for {} leases",
                leases.len()
            )));
        }
        Ok(renewed)
    }

    async fn ping(&self) -> Result<(), GateError> {
        let mut conn = self.link.conn().await?;
        let answer: Result<String, _> = redis::cmd("PING").query_async(&mut conn.manager).await;
        self.link.observe(&conn, answer).map_err(map_err)?;
        Ok(())
    }

    fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }
}
