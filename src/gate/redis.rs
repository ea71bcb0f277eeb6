//! The Redis gate (SPEC §7): one sorted set per semaphore, `<prefix>:sem:<key>`, whose members
//! are the holders (scored `+inf` while a session keeps them, else by the instant they lapse,
//! in milliseconds of Redis server time), a hash `<prefix>:sem:<key>:w` of holder → weight for
//! holders of weight > 1, the keeping sessions of each holder (`:k`) and of the semaphore
//! (`:s`); and the sessions' leases, `<prefix>:sessions`. Only the Lua scripts in `gate/lua/`
//! change them; see docs/GATE.md.

use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind};

use super::link::{Link, RedisTarget};
use super::session::{Heartbeat, Session};
use super::{
    Claim, Gate, GateError, Grant, Slot, check_acquire, check_claim, check_holder, check_key,
    check_ttl,
};

/// The default `--redis-key-prefix`.
pub const DEFAULT_PREFIX: &str = "dagop";

/// Claims sent in one pipeline: ~2,000 claims take a few tens of milliseconds on loopback,
/// well inside the connection's 1 s response timeout whatever the batch (issue 27).
const CLAIMS_PER_PIPELINE: usize = 2_000;

struct Scripts {
    session: Script,
    acquire_all: Script,
    let_go: Script,
    release: Script,
    usage: Script,
}

/// A script with the shared functions in front (`lua/prelude.lua`).
fn script(body: &str) -> Script {
    Script::new(&[include_str!("lua/prelude.lua"), body].concat())
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            session: script(include_str!("lua/session.lua")),
            acquire_all: script(include_str!("lua/acquire_all.lua")),
            let_go: script(include_str!("lua/let_go.lua")),
            release: script(include_str!("lua/release.lua")),
            usage: script(include_str!("lua/usage.lua")),
        }
    }
}

/// Semaphores in Redis, shared by every replica that uses the same server and prefix. Cheap to
/// clone: clones share one multiplexed connection, re-established by itself after a failure
/// (through Sentinels: to the master they name then), and one session: the holds they take
/// are kept while the session's lease runs ([`Gate::keep_alive`]).
#[derive(Clone)]
pub struct RedisGate {
    link: Link,
    prefix: Arc<str>,
    lease_ttl: Duration,
    lease_ttl_ms: u64,
    scripts: Arc<Scripts>,
    session: Arc<Session>,
}
impl std::fmt::Debug for RedisGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGate")
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("session", &self.session.current().0)
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
    /// [`Gate::acquire_all`] for at most [`CLAIMS_PER_PIPELINE`] claims: one round trip.
    async fn acquire_chunk(&self, claims: &[Claim]) -> Result<Vec<Grant>, GateError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let (session, registered) = self.session.current();
        let mut pipe = redis::pipe();
        if !registered {
            pipe.add_command(self.session_cmd(&session, false));
        }
        for claim in claims {
            check_claim(claim)?;
            pipe.add_command(self.acquire_all_cmd(claim, &session));
        }
        let scripts = [&self.scripts.session, &self.scripts.acquire_all];
        let mut answers: Vec<redis::Value> = self.pipeline(&scripts, &pipe).await?;
        let heartbeats = usize::from(!registered);
        if answers.len() != claims.len() + heartbeats {
            return Err(GateError::Backend(format!(
                "acquire pipeline: {} answers for {} claims",
                answers.len(),
                claims.len()
            )));
        }
        let answers = answers.split_off(heartbeats);
        let codes: Vec<i64> = answers
            .into_iter()
            .map(i64::from_redis_value)
            .collect::<Result<_, _>>()
            .map_err(|e| GateError::Backend(format!("acquire_all answered {e}")))?;
        // -1: the session had ended (every claim says so, and nothing was taken)
        if !self.session.observe(&session, !codes.contains(&-1)) {
            return Err(GateError::Unavailable(
                "the gate session had ended: its holds are being registered again".into(),
            ));
        }
        codes
            .into_iter()
            .map(|a| match usize::try_from(a) {
                Ok(0) => Ok(Grant::Granted),
                Ok(i) => Ok(Grant::Refused(i - 1)),
                Err(_) => Err(GateError::Backend(format!("acquire_all answered {a}"))),
            })
            .collect()
    }

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
            session: Arc::new(Session::new(uuid::Uuid::new_v4().simple().to_string())),
        })
    }

    /// Another handle on the same server and semaphores with a session of its own (what
    /// another process would have): its holds do not live on this session's lease.
    pub fn new_session(&self) -> Self {
        RedisGate {
            session: Arc::new(Session::new(uuid::Uuid::new_v4().simple().to_string())),
            ..self.clone()
        }
    }

    /// This handle's session id now (the member of `<prefix>:sessions`).
    pub fn session(&self) -> String {
        self.session.current().0
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

    /// The Redis key of the sessions' sorted set: `<prefix>:sessions`.
    pub fn sessions_key(&self) -> String {
        format!("{}:sessions", self.prefix)
    }

    /// The Redis key of the sessions' hold counts: `<prefix>:sessions:n`.
    pub fn counts_key(&self) -> String {
        format!("{}:sessions:n", self.prefix)
    }

    /// The four keys of a semaphore, in the scripts' order: the set, the weights, each
    /// holder's keeping sessions, the sessions keeping something (`lua/prelude.lua`).
    fn semaphore_keys(&self, key: &str) -> [String; 4] {
        let set = self.redis_key(key);
        let (keepers, kept) = (format!("{set}:k"), format!("{set}:s"));
        [set, self.weights_key(key), keepers, kept]
    }

    /// Runs `script` with `keys` and `args`. (`invoke_async` sends EVALSHA and loads the
    /// script on NOSCRIPT, e.g. after a Redis restart.)
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, GateError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.link.conn().await?;
        let answer = invocation.invoke_async(&mut conn.manager).await;
        self.link.observe(&conn, answer).map_err(map_err)
    }

    /// The session's heartbeat (`session.lua`) for session `id`.
    fn session_cmd(&self, id: &str, registered: bool) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.session.get_hash())
            .arg(2)
            .arg(self.sessions_key())
            .arg(self.counts_key())
            .arg(id)
            .arg(self.lease_ttl_ms)
            .arg(u8::from(registered));
        cmd
    }

    fn acquire_all_cmd(&self, claim: &Claim, session: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.acquire_all.get_hash())
            .arg(2 + claim.slots.len() * 4)
            .arg(self.sessions_key())
            .arg(self.counts_key());
        for slot in &claim.slots {
            for key in self.semaphore_keys(&slot.key) {
                cmd.arg(key);
            }
        }
        cmd.arg(&claim.holder).arg(session).arg(self.lease_ttl_ms);
        for slot in &claim.slots {
            cmd.arg(slot.weight).arg(slot.limit);
        }
        cmd
    }

    /// One heartbeat of session `id`: whether its lease ran, and its holds.
    async fn heartbeat(&self, id: &str, registered: bool) -> Result<(bool, u64), GateError> {
        let mut pipe = redis::pipe();
        pipe.add_command(self.session_cmd(id, registered));
        let answers: Vec<(i64, i64)> = self.pipeline(&[&self.scripts.session], &pipe).await?;
        match answers.as_slice() {
            [(alive, kept)] => Ok((*alive == 1, u64::try_from(*kept).unwrap_or(0))),
            _ => Err(GateError::Backend(format!(
                "session heartbeat: {} answers",
                answers.len()
            ))),
        }
    }

    /// Sends a pipeline of EVALSHA calls of `scripts`; if Redis lost its script cache (a
    /// restart), loads them and sends the pipeline again (every script here may run twice:
    /// a heartbeat, acquiring again are idempotent).
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        scripts: &[&Script],
        pipe: &redis::Pipeline,
    ) -> Result<Vec<T>, GateError> {
        let mut conn = self.link.conn().await?;
        let first = pipe.query_async(&mut conn.manager).await;
        match self.link.observe(&conn, first) {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                for script in scripts {
                    let loaded = script.prepare_invoke().load_async(&mut conn.manager).await;
                    self.link.observe(&conn, loaded).map_err(map_err)?;
                }
                let again = pipe.query_async(&mut conn.manager).await;
                self.link.observe(&conn, again).map_err(map_err)
            }
            other => other.map_err(map_err),
        }
    }
}

/// `text` as a literal in a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
    /// A claim of one semaphore.
    async fn acquire(
        &self,
        key: &str,
        holder: &str,
        weight: u32,
        limit: u32,
    ) -> Result<bool, GateError> {
        check_acquire(key, holder, weight)?;
        let claim = Claim {
            holder: holder.to_string(),
            slots: vec![Slot::new(key, weight, limit)],
        };
        let grants = self.acquire_all(std::slice::from_ref(&claim)).await?;
        Ok(grants.first() == Some(&Grant::Granted))
    }

    /// One pipeline of EVALSHA acquire_all, one per claim (`acquire_all.lua`, the only
    /// admission script), after the heartbeat that registers the session if it is new.
    async fn acquire_all(&self, claims: &[Claim]) -> Result<Vec<Grant>, GateError> {
        // one pipeline per chunk: a pass with a very large batch (100,000 runs due at once)
        // in one pipeline would outlast the response timeout and never be answered
        let mut grants = Vec::with_capacity(claims.len());
        for chunk in claims.chunks(CLAIMS_PER_PIPELINE) {
            grants.extend(self.acquire_chunk(chunk).await?);
        }
        Ok(grants)
    }

    async fn keep_alive(&self) -> Result<Heartbeat, GateError> {
        self.session
            .keep_alive(|id, registered| async move { self.heartbeat(&id, registered).await })
            .await
    }

    /// `SCAN` for the keepers hashes `<prefix>:sem:*:k`, then each one's keepers: the holders
    /// whose list names this session.
    async fn kept(&self) -> Result<Vec<(String, String)>, GateError> {
        let (session, _) = self.session.current();
        let head = format!("{}:sem:", self.prefix);
        let pattern = format!("{}*:k", glob_escape(&head));
        let mut conn = self.link.conn().await?;
        let mut found: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let answer: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn.manager)
                .await;
            let (next, keys) = self.link.observe(&conn, answer).map_err(map_err)?;
            found.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        found.sort();
        found.dedup();
        let mut kept = Vec::new();
        for keepers in found {
            let answer: Result<Vec<(String, String)>, _> = redis::cmd("HGETALL")
                .arg(&keepers)
                .query_async(&mut conn.manager)
                .await;
            let holders = self.link.observe(&conn, answer).map_err(map_err)?;
            let Some(key) = keepers
                .strip_prefix(&head)
                .and_then(|k| k.strip_suffix(":k"))
            else {
                continue;
            };
            for (holder, list) in holders {
                if list.split(' ').any(|s| s == session) {
                    kept.push((key.to_string(), holder));
                }
            }
        }
        kept.sort();
        Ok(kept)
    }

    fn session_epoch(&self) -> u64 {
        self.session.epoch()
    }

    fn new_session(&self) -> Self {
        RedisGate::new_session(self)
    }

    async fn let_go(&self, key: &str, holder: &str) -> Result<(), GateError> {
        check_key(key)?;
        check_holder(holder)?;
        let (session, _) = self.session.current();
        let ttl = self.lease_ttl_ms.to_string();
        let args: [&[u8]; 3] = [holder.as_bytes(), session.as_bytes(), ttl.as_bytes()];
        let mut keys = self.semaphore_keys(key).to_vec();
        keys.push(self.counts_key());
        let _kept: i64 = self.run(&self.scripts.let_go, &keys, &args).await?;
        Ok(())
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), GateError> {
        check_key(key)?;
        check_holder(holder)?;
        let (session, _) = self.session.current();
        let mut keys = self.semaphore_keys(key).to_vec();
        keys.push(self.counts_key());
        keys.push(self.sessions_key());
        let args: [&[u8]; 2] = [holder.as_bytes(), session.as_bytes()];
        let _removed: i64 = self.run(&self.scripts.release, &keys, &args).await?;
        Ok(())
    }

    async fn usage(&self, key: &str) -> Result<u32, GateError> {
        check_key(key)?;
        let mut keys = vec![self.sessions_key()];
        keys.extend(self.semaphore_keys(key));
        let used: i64 = self.run(&self.scripts.usage, &keys, &[]).await?;
        Ok(u32::try_from(used.max(0)).unwrap_or(u32::MAX))
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
