//! Nomad Variables and their locks (`/v1/var/<path>`, `/v1/vars`) as a state machine: every
//! rule of `docs/nomad-variables.md` (read from hashicorp/nomad's `command/agent/
//! variable_endpoint.go`, `nomad/variables_endpoint.go`, `nomad/state/state_store_variables.go`,
//! `nomad/structs/variables.go` and `nomad/locks.go`), with time and the raft index passed in so
//! that each rule can be pinned by a unit test. The server ([`crate::server`]) owns the clock,
//! the raft index, the events and the blocking queries.
//!
//! What the emulator leaves out: ACL policies on variable paths (every caller is management,
//! or, with ACLs enabled, a non-management token is refused with 403), encryption, `filter`
//! and `reverse` on the list, the `region` and `stale` parameters, and leader changes (lock
//! timers never restart). Go's JSON decoder messages are approximated: the status is Nomad's,
//! the text is serde's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::event::Event;
use crate::query::{first, parse_duration};

/// `defaultLockTTL` and `defaultLockDelay` (`nomad/structs/variables.go`).
const DEFAULT_LOCK: Duration = Duration::from_secs(15);
/// `maxLockTTL`.
const MAX_LOCK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Nomad's `minLockTTL`; the emulator's floor is configurable for fast tests.
pub const NOMAD_MIN_LOCK_TTL: Duration = Duration::from_secs(10);
/// `maxVariableSize`: the sum of key and value lengths.
const MAX_VARIABLE_SIZE: usize = 64 * 1024;

/// A lock on a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lock {
    id: String,
    ttl: Duration,
    delay: Duration,
}

/// One variable: `VariableMetadata` plus its items, and the leader's in-memory timers.
#[derive(Debug, Clone)]
struct Variable {
    namespace: String,
    path: String,
    items: Option<BTreeMap<String, String>>,
    lock: Option<Lock>,
    create_index: u64,
    create_time: i64,
    modify_index: u64,
    modify_time: i64,
    /// The TTL timer (`lockTTLTimer`): 2 × TTL after an acquire or renew. Only an acquire
    /// creates one, so a lock stored by a plain write never expires.
    ttl_deadline: Option<Instant>,
    /// When the lock delay that followed an expired TTL ends: the lock, whichever it is then,
    /// is removed (the delayed `invalidateVariableLock` is never cancelled).
    removal_at: Option<Instant>,
}

/// A request to the variables endpoints, as the HTTP layer hands it over.
#[derive(Debug)]
pub(crate) struct VarRequest<'a> {
    /// `GET`, `PUT`, `POST`, `DELETE`, ...
    pub method: &'a str,
    /// The decoded URL path.
    pub path: &'a str,
    /// The query pairs.
    pub query: &'a [(String, String)],
    /// The request body, `None` for none (Go's `http.NoBody`).
    pub body: Option<&'a [u8]>,
}

/// An answer: status, body, whether the body is JSON, and `X-Nomad-Index` if set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
    /// `application/json` rather than plain text.
    pub json: bool,
    /// `X-Nomad-Index`.
    pub index: Option<u64>,
    /// `X-Nomad-NextToken`: a list page with more after it.
    pub next_token: Option<String>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, body: body.into(), json: false, index: None, next_token: None }
    }

    fn json(status: u16, body: String, index: Option<u64>) -> Reply {
        Reply { status, body, json: true, index, next_token: None }
    }

    fn with_index(mut self, index: Option<u64>) -> Reply {
        self.index = index;
        self
    }
}

/// What a request did: the reply, and the `Variable` event when it wrote at the raft index
/// it was given.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The answer.
    pub reply: Reply,
    /// The event of the write, `None` when nothing was written (the index is not used).
    pub event: Option<Event>,
}

impl From<Reply> for Applied {
    fn from(reply: Reply) -> Applied {
        Applied { reply, event: None }
    }
}

/// What a blocking read waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Not a blocking read: answer now.
    None,
    /// Answer once the reply's index passes `min_index`, or after `wait`.
    Until { min_index: u64, wait: Duration },
}

/// The variables table.
#[derive(Debug)]
pub(crate) struct Variables {
    vars: BTreeMap<(String, String), Variable>,
    /// The table's index (the last write's raft index).
    table_index: u64,
    /// The shortest TTL accepted (Nomad: 10 s).
    min_ttl: Duration,
    /// Numbers generated lock ids.
    ids: u64,
    /// Seeds generated lock ids.
    seed: u64,
}

/// Operations on `/v1/var/<path>` (`getLockOperation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockOp {
    Acquire,
    Renew,
    Release,
}

/// A decoded request body (`structs.VariableDecrypted`, keys matched case-insensitively).
#[derive(Debug, Default)]
struct Body {
    namespace: Option<String>,
    items: Option<BTreeMap<String, String>>,
    lock: Option<BodyLock>,
}

#[derive(Debug, Default)]
struct BodyLock {
    id: String,
    ttl: Duration,
    delay: Duration,
}

impl Variables {
    /// An empty table whose locks must have a TTL of at least `min_ttl`.
    pub fn new(min_ttl: Duration, seed: u64) -> Variables {
        Variables { vars: BTreeMap::new(), table_index: 0, min_ttl, ids: 0, seed }
    }

    /// The table's index, floored at 1 (`X-Nomad-Index` of misses and lists).
    pub fn table_index(&self) -> u64 {
        self.table_index.max(1)
    }

    /// Whether `req` is a blocking read, and on what. `Err` is the 400 of a bad `index` or
    /// `wait` (`parseWait`: default and cap 300 s; only with `index` > 0).
    pub fn watch(req: &VarRequest<'_>) -> Result<Watch, Reply> {
        const MAX_BLOCK: Duration = Duration::from_secs(300);
        if req.method != "GET" {
            return Ok(Watch::None);
        }
        let wait = match first(req.query, "wait").filter(|w| !w.is_empty()) {
            None => MAX_BLOCK,
            Some(text) => match parse_duration(text) {
                Some(wait) if wait.is_zero() => MAX_BLOCK,
                Some(wait) => wait.min(MAX_BLOCK),
                None => return Err(Reply::text(400, "Invalid wait timefailed to parse parameters")),
            },
        };
        match first(req.query, "index").filter(|i| !i.is_empty()) {
            None => Ok(Watch::None),
            Some(text) => match text.parse::<u64>() {
                Ok(0) => Ok(Watch::None),
                Ok(min_index) => Ok(Watch::Until { min_index, wait }),
                Err(_) => Err(Reply::text(400, "Invalid indexfailed to parse parameters")),
            },
        }
    }

    /// The index a read of `req` answers with now (what a blocking read compares).
    pub fn read_index(&self, req: &VarRequest<'_>) -> u64 {
        match var_path(req.path) {
            Some(path) => {
                let key = (query_namespace(req.query), path.to_owned());
                self.vars.get(&key).map_or(self.table_index(), |v| v.modify_index)
            }
            None => self.table_index(),
        }
    }

    /// Serves one request at time `now` (`wall_ns`: Unix nanoseconds). A write happens at
    /// raft index `index`, which the caller then publishes with the returned event.
    pub fn apply(&mut self, req: &VarRequest<'_>, index: u64, now: Instant, wall_ns: i64) -> Applied {
        if req.path == "/v1/vars" {
            if req.method != "GET" {
                return Reply::text(405, "Invalid method").into();
            }
            return self.list(req.query).into();
        }
        let Some(path) = var_path(req.path) else {
            return Reply::text(400, "missing variable path").into();
        };
        let path = path.to_owned();
        match req.method {
            "GET" => self.read(&query_namespace(req.query), &path).into(),
            "PUT" | "POST" => self.write(req, path, index, now, wall_ns),
            "DELETE" => self.delete(req, &path, index),
            _ => Reply::text(400, "Invalid method").into(),
        }
    }

    /// Runs the lock timers due at `now`: an expired TTL starts the lock delay; a lock delay
    /// that ended removes the lock (at raft index `index`). Returns the event of the one
    /// removal it made, if any; call again with a new index until it returns `None`.
    pub fn expire(&mut self, now: Instant, index: u64) -> Option<Event> {
        for var in self.vars.values_mut() {
            if let Some(deadline) = var.ttl_deadline.filter(|d| *d <= now) {
                var.ttl_deadline = None;
                let delay = var.lock.as_ref().map_or(Duration::ZERO, |l| l.delay);
                var.removal_at = Some(deadline + delay);
            }
        }
        let due = self
            .vars
            .iter()
            .find(|(_, v)| v.removal_at.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())?;
        let var = self.vars.get_mut(&due)?;
        var.removal_at = None;
        var.lock.take()?;
        var.modify_index = index;
        self.table_index = index;
        Some(event(var, false))
    }

    fn read(&self, namespace: &str, path: &str) -> Reply {
        match self.vars.get(&(namespace.to_owned(), path.to_owned())) {
            Some(var) => Reply::json(200, render(var, true, var.items.as_ref()), Some(var.modify_index)),
            None => Reply::text(404, "variable not found").with_index(Some(self.table_index())),
        }
    }

    /// `GET /v1/vars`: metadata ordered by (namespace, path), `prefix`, `namespace` (`*` for
    /// all), `per_page` and `next_token` (`"<namespace>.<path>"`).
    fn list(&self, query: &[(String, String)]) -> Reply {
        let namespace = query_namespace(query);
        let prefix = first(query, "prefix").unwrap_or("");
        let per_page = first(query, "per_page").and_then(|p| p.parse::<usize>().ok()).filter(|p| *p > 0);
        let next_token = first(query, "next_token").filter(|t| !t.is_empty());
        let mut page = Vec::new();
        let mut next = None;
        for var in self.vars.values() {
            if (namespace != "*" && var.namespace != namespace) || !var.path.starts_with(prefix) {
                continue;
            }
            let token = format!("{}.{}", var.namespace, var.path);
            if next_token.is_some_and(|from| token.as_str() < from) {
                continue;
            }
            if per_page.is_some_and(|n| page.len() == n) {
                next = Some(token);
                break;
            }
            page.push(render(var, true, None));
        }
        Reply {
            next_token: next,
            ..Reply::json(200, format!("[{}]", page.join(",")), Some(self.table_index()))
        }
    }

    fn write(
        &mut self,
        req: &VarRequest<'_>,
        path: String,
        index: u64,
        now: Instant,
        wall_ns: i64,
    ) -> Applied {
        let op = match lock_op(req.query) {
            Ok(op) => op,
            Err(reply) => return reply.into(),
        };
        let cas = first(req.query, "cas").filter(|c| !c.is_empty());
        if op.is_some() && cas.is_some() {
            return Reply::text(400, "CAS can't be used with lock operations").into();
        }
        let body = match decode(req.body) {
            Ok(body) => body,
            Err(reply) => return reply.into(),
        };
        let namespace =
            body.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| query_namespace(req.query));
        match op {
            None => self.upsert(body, namespace, path, cas, index, wall_ns),
            Some(LockOp::Acquire) => self.acquire(body, namespace, path, index, now, wall_ns),
            Some(LockOp::Renew) => self.renew(&body, &query_namespace(req.query), &path, now).into(),
            Some(LockOp::Release) => self.release(&body, &namespace, &path, index),
        }
    }

    /// A plain write (`variableUpsert`), with `cas` if given.
    fn upsert(
        &mut self,
        body: Body,
        namespace: String,
        path: String,
        cas: Option<&str>,
        index: u64,
        wall_ns: i64,
    ) -> Applied {
        let Some(items) = body.items.filter(|i| !i.is_empty()) else {
            return Reply::text(400, "variable missing required Items object").into();
        };
        let cas = match cas.map(parse_cas).transpose() {
            Ok(cas) => cas,
            Err(reply) => return reply.into(),
        };
        if body.lock.as_ref().is_some_and(|l| !l.ttl.is_zero() || !l.delay.is_zero()) {
            return Reply::text(
                400,
                "RPC Error:: 400,RPC Error:: 400,variable should not contain lock definition",
            )
            .with_index(Some(0))
            .into();
        }
        if let Err(message) = validate(&namespace, &path, Some(&items), None, self.min_ttl) {
            return Reply::text(400, format!("RPC Error:: 400,{message}")).into();
        }
        let lock = body.lock.map(|l| self.canonical_lock(l));
        let key = (namespace.clone(), path.clone());
        if let Some(conflict) = cas.and_then(|cas| self.cas_conflict(&key, cas)) {
            return conflict.into();
        }
        let existing = self.vars.get(&key);
        if existing.is_some_and(|v| {
            v.lock.as_ref().is_some_and(|held| lock.as_ref().is_none_or(|l| l.id != held.id))
        }) {
            return zero_conflict(&namespace, &path, Some(0)).into();
        }
        let owner = lock.is_some();
        let var = self.store(key, Some(items), lock, index, wall_ns);
        let reply = Reply::json(200, render(var, owner, var.items.as_ref()), Some(index));
        Applied { reply, event: Some(event(var, false)) }
    }

    /// `?lock-acquire`: create or overwrite the variable with a lock, unless another holds it.
    fn acquire(
        &mut self,
        body: Body,
        namespace: String,
        path: String,
        index: u64,
        now: Instant,
        wall_ns: i64,
    ) -> Applied {
        let lock = self.canonical_lock(body.lock.unwrap_or_default());
        if let Err(message) = validate(&namespace, &path, body.items.as_ref(), Some(&lock), self.min_ttl) {
            return Reply::text(400, format!("RPC Error:: 400,{message}")).into();
        }
        let key = (namespace.clone(), path.clone());
        if self.vars.get(&key).and_then(|v| v.lock.as_ref()).is_some_and(|held| held.id != lock.id) {
            return zero_conflict(&namespace, &path, None).into();
        }
        let ttl = lock.ttl;
        let var = self.store(key, body.items.filter(|i| !i.is_empty()), Some(lock), index, wall_ns);
        if var.ttl_deadline.is_none() {
            var.ttl_deadline = Some(now + 2 * ttl);
        }
        let reply = Reply::json(200, render(var, true, var.items.as_ref()), Some(index));
        Applied { reply, event: Some(event(var, false)) }
    }

    /// `?lock-renew`: restarts the TTL timer of the holder's live lock; no write, no index.
    fn renew(&mut self, body: &Body, namespace: &str, path: &str, now: Instant) -> Reply {
        let id = body.lock.as_ref().map_or("", |l| l.id.as_str());
        if id.is_empty() {
            return Reply::text(500, "1 error occurred:\n\t* missing lock ID\n\n");
        }
        let Some(var) = self.vars.get_mut(&(namespace.to_owned(), path.to_owned())) else {
            return Reply::text(404, "variable doesn't exist");
        };
        let Some(held) = &var.lock else {
            return Reply::text(409, "variable doesn't hold a lock");
        };
        if held.id != id || var.ttl_deadline.is_none() {
            return Reply::text(409, "attempting to modify locked variable");
        }
        var.ttl_deadline = Some(now + 2 * held.ttl);
        Reply::json(200, render(var, true, None), None)
    }

    /// `?lock-release`: removes the holder's lock, keeps the items; no lock delay.
    fn release(&mut self, body: &Body, namespace: &str, path: &str, index: u64) -> Applied {
        let id = body.lock.as_ref().map_or("", |l| l.id.as_str());
        if id.is_empty() {
            return Reply::text(400, "RPC Error:: 400,missing lock information").with_index(Some(0)).into();
        }
        if body.items.is_some() {
            return Reply::text(400, "RPC Error:: 400,lock release operation doesn't take variable items")
                .with_index(Some(0))
                .into();
        }
        if !valid_path(path) {
            return Reply::text(400, format!("invalid path \"{path}\"")).with_index(Some(0)).into();
        }
        let Some(var) = self.vars.get_mut(&(namespace.to_owned(), path.to_owned())) else {
            return Reply::text(500, "variable doesn't exist").with_index(Some(0)).into();
        };
        let Some(held) = &var.lock else {
            return Reply::text(500, "variable doesn't hold a lock").with_index(Some(0)).into();
        };
        if held.id != id {
            return zero_conflict(namespace, path, None).into();
        }
        var.lock = None;
        var.ttl_deadline = None;
        var.modify_index = index;
        self.table_index = index;
        let reply = Reply::json(200, render(var, false, None), Some(index));
        Applied { reply, event: Some(event(var, false)) }
    }

    /// `DELETE`, with `cas` if given; a locked variable is never deleted over HTTP.
    fn delete(&mut self, req: &VarRequest<'_>, path: &str, index: u64) -> Applied {
        let namespace = query_namespace(req.query);
        let cas = match first(req.query, "cas").filter(|c| !c.is_empty()).map(parse_cas).transpose() {
            Ok(cas) => cas,
            Err(reply) => return reply.into(),
        };
        let key = (namespace.clone(), path.to_owned());
        if let Some(conflict) = cas.and_then(|cas| self.cas_conflict(&key, cas)) {
            return conflict.into();
        }
        let Some(var) = self.vars.get(&key) else {
            return Reply::text(204, "").with_index(Some(self.table_index())).into();
        };
        if var.lock.is_some() {
            return zero_conflict(&namespace, path, Some(0)).into();
        }
        let Some(var) = self.vars.remove(&key) else {
            return Reply::text(204, "").into();
        };
        self.table_index = index;
        Applied { reply: Reply::text(204, "").with_index(Some(index)), event: Some(event(&var, true)) }
    }

    /// The check-and-set rules (`VarSetCAS`, `VarDeleteCAS`): `Some` is the 409.
    fn cas_conflict(&self, key: &(String, String), cas: u64) -> Option<Reply> {
        match (self.vars.get(key), cas) {
            (None, 0) => None,
            (None, _) => Some(zero_conflict(&key.0, &key.1, Some(0))),
            (Some(var), cas) if cas == 0 || cas != var.modify_index => {
                Some(Reply::json(409, render(var, true, var.items.as_ref()), Some(var.modify_index)))
            }
            (Some(_), _) => None,
        }
    }

    /// `VariableLock.Canonicalize`: a new id when none is given, 15 s for zero durations.
    fn canonical_lock(&mut self, lock: BodyLock) -> Lock {
        let id = if lock.id.is_empty() { self.new_id() } else { lock.id };
        let or_default = |d: Duration| if d.is_zero() { DEFAULT_LOCK } else { d };
        Lock { id, ttl: or_default(lock.ttl), delay: or_default(lock.delay) }
    }

    /// A UUID-shaped id, as `uuid.Generate` prints it.
    fn new_id(&mut self) -> String {
        self.ids += 1;
        let mut x = self.seed ^ self.ids.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (a, b) = (next(), next());
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// Writes the variable at `index` (`VarSet`): the create index and time are kept.
    fn store(
        &mut self,
        key: (String, String),
        items: Option<BTreeMap<String, String>>,
        lock: Option<Lock>,
        index: u64,
        wall_ns: i64,
    ) -> &mut Variable {
        self.table_index = index;
        let var = self.vars.entry(key.clone()).or_insert_with(|| Variable {
            namespace: key.0.clone(),
            path: key.1.clone(),
            items: None,
            lock: None,
            create_index: index,
            create_time: wall_ns,
            modify_index: index,
            modify_time: wall_ns,
            ttl_deadline: None,
            removal_at: None,
        });
        if var.lock.as_ref().map(|l| &l.id) != lock.as_ref().map(|l| &l.id) {
            var.ttl_deadline = None;
        }
        var.items = items;
        var.lock = lock;
        var.modify_index = index;
        var.modify_time = wall_ns;
        var
    }
}

/// The variable path of a `/v1/var/<path>` URL; `None` when empty.
fn var_path(url_path: &str) -> Option<&str> {
    url_path.strip_prefix("/v1/var/").filter(|p| !p.is_empty())
}

/// `?namespace=`, `default` when absent.
fn query_namespace(query: &[(String, String)]) -> String {
    first(query, "namespace").filter(|n| !n.is_empty()).unwrap_or("default").to_owned()
}

/// `getLockOperation`: presence counts, the value does not.
fn lock_op(query: &[(String, String)]) -> Result<Option<LockOp>, Reply> {
    let present = |name: &str| query.iter().any(|(k, _)| k == name);
    let ops: Vec<LockOp> =
        [("lock-acquire", LockOp::Acquire), ("lock-renew", LockOp::Renew), ("lock-release", LockOp::Release)]
            .into_iter()
            .filter(|(name, _)| present(name))
            .map(|(_, op)| op)
            .collect();
    match ops.as_slice() {
        [] => Ok(None),
        [op] => Ok(Some(*op)),
        _ => Err(Reply::text(400, "multiple lock operations")),
    }
}

/// `parseCAS`.
fn parse_cas(text: &str) -> Result<u64, Reply> {
    text.parse::<u64>().map_err(|_| {
        Reply::text(400, format!("can not parse cas: strconv.ParseUint: parsing \"{text}\": invalid syntax"))
    })
}

/// Decodes a `VariableDecrypted` body as `encoding/json` would (unknown keys ignored, keys
/// matched case-insensitively, `Items` strings only, durations as Go strings or nanoseconds).
fn decode(body: Option<&[u8]>) -> Result<Body, Reply> {
    let Some(bytes) = body.filter(|b| !b.is_empty()) else {
        return Err(Reply::text(400, "Request body is empty"));
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Reply::text(400, e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(Reply::text(
            400,
            "json: cannot unmarshal into Go value of type structs.VariableDecrypted",
        ));
    };
    let mut body = Body { namespace: string_field(&object, "Namespace"), ..Body::default() };
    match field(&object, "Items") {
        None | Some(Value::Null) => {}
        Some(Value::Object(items)) => {
            let mut map = BTreeMap::new();
            for (k, v) in items {
                let Value::String(v) = v else {
                    return Err(Reply::text(
                        400,
                        "json: cannot unmarshal into Go struct field VariableDecrypted.Items of type string",
                    ));
                };
                map.insert(k.clone(), v.clone());
            }
            body.items = Some(map);
        }
        Some(_) => {
            return Err(Reply::text(
                400,
                "json: cannot unmarshal into Go struct field VariableDecrypted.Items",
            ));
        }
    }
    if let Some(Value::Object(lock)) = field(&object, "Lock") {
        body.lock = Some(BodyLock {
            id: string_field(lock, "ID").unwrap_or_default(),
            ttl: duration_field(lock, "TTL")?,
            delay: duration_field(lock, "LockDelay")?,
        });
    }
    Ok(body)
}

fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn string_field(object: &Map<String, Value>, name: &str) -> Option<String> {
    field(object, name).and_then(Value::as_str).map(str::to_owned)
}

/// `VariableLock.UnmarshalJSON`: a Go duration string, a number of nanoseconds, else zero.
fn duration_field(object: &Map<String, Value>, name: &str) -> Result<Duration, Reply> {
    match field(object, name) {
        Some(Value::String(text)) if text.is_empty() => Ok(Duration::ZERO),
        Some(Value::String(text)) => {
            parse_duration(text).ok_or_else(|| Reply::text(400, format!("time: invalid duration \"{text}\"")))
        }
        Some(Value::Number(n)) => Ok(Duration::from_nanos(n.as_u64().unwrap_or(0))),
        _ => Ok(Duration::ZERO),
    }
}

/// `^[a-zA-Z0-9-_~/]{1,128}$`.
fn valid_path(path: &str) -> bool {
    (1..=128).contains(&path.len()) && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~/".contains(&b))
}

/// `Validate` / `ValidateForLock`: the first message of what is wrong.
fn validate(
    namespace: &str,
    path: &str,
    items: Option<&BTreeMap<String, String>>,
    lock: Option<&Lock>,
    min_ttl: Duration,
) -> Result<(), String> {
    if namespace == "*" {
        return Err("can not target wildcard (\"*\")namespace".to_owned());
    }
    let size: usize = items.map_or(0, |i| i.iter().map(|(k, v)| k.len() + v.len()).sum());
    if size > MAX_VARIABLE_SIZE {
        return Err("variables are limited to 64KiB in total size".to_owned());
    }
    if !valid_path(path) {
        return Err(format!("invalid path \"{path}\""));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts[0] == "nomad" {
        match parts.get(1) {
            None => {
                return Err("\"nomad\" is a reserved top-level directory path, but you may write variables to \"nomad/jobs\", \"nomad/job-templates\", \"nomad/sentinel\", or below".to_owned());
            }
            Some(&"jobs") | Some(&"sentinel") => {}
            Some(&"job-templates") if parts.len() > 2 => {}
            Some(&"job-templates") => {
                return Err("\"nomad/job-templates\" is a reserved directory path, but you may write variables at the level below it, for example, \"nomad/job-templates/template-name\"".to_owned());
            }
            Some(_) => {
                return Err("only paths at \"nomad/jobs\" or \"nomad/job-templates\" and below are valid paths under the top-level \"nomad\" directory".to_owned());
            }
        }
    }
    if lock.is_some_and(|lock| lock.ttl < min_ttl || lock.ttl > MAX_LOCK_TTL) {
        return Err("TTL must be between 10 seconds and 24 hours".to_owned());
    }
    Ok(())
}

/// The 409 of a conflict with no variable behind it (`{Namespace, Path}` and zeros).
fn zero_conflict(namespace: &str, path: &str, index: Option<u64>) -> Reply {
    let quote = |s: &str| Value::from(s).to_string();
    let body = format!(
        "{{\"Namespace\":{},\"Path\":{},\"CreateIndex\":0,\"CreateTime\":0,\"ModifyIndex\":0,\"ModifyTime\":0}}",
        quote(namespace),
        quote(path)
    );
    Reply::json(409, body, index)
}

/// `time.Duration.String()` for the whole-millisecond durations locks use; `""` for zero
/// (`VariableLock.MarshalJSON`).
pub(crate) fn go_duration(d: Duration) -> String {
    if d.is_zero() {
        return String::new();
    }
    let total_ms = d.as_millis();
    if total_ms < 1000 {
        return format!("{total_ms}ms");
    }
    let (h, rest_ms) = (total_ms / 3_600_000, total_ms % 3_600_000);
    let (m, s_ms) = (rest_ms / 60_000, rest_ms % 60_000);
    let seconds = if s_ms % 1000 == 0 {
        format!("{}s", s_ms / 1000)
    } else {
        format!("{}", s_ms as f64 / 1000.0).trim_end_matches('0').to_owned() + "s"
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// A variable's JSON: `VariableMetadata` fields in struct order (`Lock` when `with_lock` and
/// present), then `Items` when non-empty, as go-msgpack's JSON handle writes them.
fn render(var: &Variable, with_lock: bool, items: Option<&BTreeMap<String, String>>) -> String {
    let quote = |s: &str| Value::from(s).to_string();
    let mut out = format!("{{\"Namespace\":{},\"Path\":{}", quote(&var.namespace), quote(&var.path));
    if let Some(lock) = var.lock.as_ref().filter(|_| with_lock) {
        out.push_str(&format!(",\"Lock\":{}", lock_json(lock)));
    }
    out.push_str(&format!(
        ",\"CreateIndex\":{},\"CreateTime\":{},\"ModifyIndex\":{},\"ModifyTime\":{}",
        var.create_index, var.create_time, var.modify_index, var.modify_time
    ));
    if let Some(items) = items.filter(|i| !i.is_empty()) {
        out.push_str(&format!(",\"Items\":{}", serde_json::to_string(items).unwrap_or_default()));
    }
    out.push('}');
    out
}

/// `VariableLock.MarshalJSON`: `{"TTL":..,"LockDelay":..,"ID":..}`.
fn lock_json(lock: &Lock) -> String {
    let quote = |s: &str| Value::from(s).to_string();
    format!(
        "{{\"TTL\":{},\"LockDelay\":{},\"ID\":{}}}",
        quote(&go_duration(lock.ttl)),
        quote(&go_duration(lock.delay)),
        quote(&lock.id)
    )
}

/// The `Variable` event of a write (`VariableUpdated`, also for a delete), with the lock,
/// its id included, and no items (`nomad/state/events.go`).
fn event(var: &Variable, deleted: bool) -> Event {
    let payload = format!("{{\"Metadata\":{},\"Deleted\":{deleted}}}", render(var, true, None));
    Event::new("Variable", "VariableUpdated", var.path.as_str(), var.namespace.as_str(), None, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table with Nomad's limits, a clock and a raft index.
    struct World {
        vars: Variables,
        now: Instant,
        index: u64,
        events: Vec<Event>,
    }

    impl World {
        fn new() -> World {
            World {
                vars: Variables::new(NOMAD_MIN_LOCK_TTL, 7),
                now: Instant::now(),
                index: 100,
                events: Vec::new(),
            }
        }

        fn call(&mut self, method: &str, url: &str, body: Option<&str>) -> Reply {
            let (path, query) = url.split_once('?').unwrap_or((url, ""));
            let query = crate::query::parse_query(query);
            let req = VarRequest { method, path, query: &query, body: body.map(str::as_bytes) };
            self.index += 1;
            let applied = self.vars.apply(&req, self.index, self.now, 1_000);
            self.events.extend(applied.event);
            applied.reply
        }

        fn json(&mut self, method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
            let reply = self.call(method, url, body);
            (reply.status, serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body)))
        }

        fn pass(&mut self, d: Duration) {
            self.now += d;
            loop {
                self.index += 1;
                match self.vars.expire(self.now, self.index) {
                    Some(event) => self.events.push(event),
                    None => break,
                }
            }
        }

        fn acquire(&mut self, body: &str) -> (u16, Value) {
            self.json("PUT", "/v1/var/ha/lock?lock-acquire", Some(body))
        }
    }

    #[test]
    fn a_plain_write_needs_items_and_a_read_returns_them_with_the_modify_index() {
        let mut w = World::new();
        assert_eq!(
            w.call("PUT", "/v1/var/a", Some(r#"{"Items":{}}"#)).body,
            "variable missing required Items object"
        );
        assert_eq!(w.call("PUT", "/v1/var/a", None).body, "Request body is empty");
        let put = w.call("PUT", "/v1/var/a", Some(r#"{"Items":{"k":"v"}}"#));
        assert_eq!((put.status, put.index), (200, Some(w.index)));
        let get = w.call("GET", "/v1/var/a", None);
        assert_eq!(get.index, put.index);
        assert!(get.body.starts_with(r#"{"Namespace":"default","Path":"a","CreateIndex":"#), "{}", get.body);
        assert!(get.body.ends_with(r#","Items":{"k":"v"}}"#), "{}", get.body);
        let missing = w.call("GET", "/v1/var/b", None);
        assert_eq!((missing.status, missing.body.as_str()), (404, "variable not found"));
        assert_eq!(w.events.len(), 1);
        assert_eq!(
            (w.events[0].topic.as_str(), w.events[0].event_type.as_str()),
            ("Variable", "VariableUpdated")
        );
    }

    #[test]
    fn check_and_set_conflicts_answer_with_the_existing_variable() {
        let mut w = World::new();
        let (status, created) = w.json("PUT", "/v1/var/a?cas=0", Some(r#"{"Items":{"k":"1"}}"#));
        assert_eq!(status, 200);
        let (status, conflict) = w.json("PUT", "/v1/var/a?cas=0", Some(r#"{"Items":{"k":"2"}}"#));
        assert_eq!((status, &conflict["Items"]["k"]), (409, &Value::from("1")));
        let stale = w.call("PUT", "/v1/var/a?cas=1", Some(r#"{"Items":{"k":"2"}}"#));
        assert_eq!((stale.status, stale.index), (409, created["ModifyIndex"].as_u64()));
        let url = format!("/v1/var/a?cas={}", created["ModifyIndex"]);
        assert_eq!(w.call("PUT", &url, Some(r#"{"Items":{"k":"2"}}"#)).status, 200);
        let (status, zero) = w.json("PUT", "/v1/var/new?cas=5", Some(r#"{"Items":{"k":"2"}}"#));
        assert_eq!((status, &zero["ModifyIndex"]), (409, &Value::from(0)));
        assert!(
            w.call("PUT", "/v1/var/a?cas=x", Some(r#"{"Items":{"k":"2"}}"#))
                .body
                .starts_with("can not parse cas")
        );
        let both = w.call("PUT", "/v1/var/a?cas=1&lock-acquire", Some("{}"));
        assert_eq!((both.status, both.body.as_str()), (400, "CAS can't be used with lock operations"));
        let two = w.call("PUT", "/v1/var/a?lock-renew&lock-acquire", Some("{}"));
        assert_eq!((two.status, two.body.as_str()), (400, "multiple lock operations"));
    }

    #[test]
    fn acquire_defaults_to_fifteen_seconds_and_keeps_a_client_id() {
        let mut w = World::new();
        let (status, held) = w.acquire(r#"{"Items":{"k":"v"}}"#);
        assert_eq!(status, 200);
        assert_eq!(held["Lock"]["TTL"], "15s");
        assert_eq!(held["Lock"]["LockDelay"], "15s");
        assert_eq!(held["Lock"]["ID"].as_str().map(str::len), Some(36));
        let (status, mine) =
            w.json("PUT", "/v1/var/other?lock-acquire", Some(r#"{"Lock":{"ID":"mine","TTL":"1m30s"}}"#));
        assert_eq!(
            (status, &mine["Lock"]["ID"], &mine["Lock"]["TTL"]),
            (200, &Value::from("mine"), &Value::from("1m30s"))
        );
        assert!(mine.get("Items").is_none(), "an acquire without items has none: {mine}");
    }

    #[test]
    fn a_held_lock_refuses_other_acquirers_writes_and_deletes_with_the_zero_conflict() {
        let mut w = World::new();
        let (_, held) = w.acquire(r#"{"Lock":{"TTL":"10s"},"Items":{"k":"v"}}"#);
        let id = held["Lock"]["ID"].as_str().unwrap().to_owned();
        let other = w.call("PUT", "/v1/var/ha/lock?lock-acquire", Some("{}"));
        assert_eq!(other.status, 409);
        assert_eq!(other.index, None, "set after WriteHeader: not sent");
        assert_eq!(
            other.body,
            r#"{"Namespace":"default","Path":"ha/lock","CreateIndex":0,"CreateTime":0,"ModifyIndex":0,"ModifyTime":0}"#
        );
        assert_eq!(w.call("PUT", "/v1/var/ha/lock", Some(r#"{"Items":{"k":"x"}}"#)).status, 409, "the fence");
        assert_eq!(
            w.call("PUT", "/v1/var/ha/lock", Some(r#"{"Items":{"k":"x"},"Lock":{"ID":"wrong"}}"#)).status,
            409
        );
        assert_eq!(w.call("DELETE", "/v1/var/ha/lock", None).status, 409);
        let body = format!(r#"{{"Items":{{"k":"x"}},"Lock":{{"ID":"{id}"}}}}"#);
        let (status, written) = w.json("PUT", "/v1/var/ha/lock", Some(&body));
        assert_eq!(
            (status, &written["Lock"]["TTL"]),
            (200, &Value::from("15s")),
            "a write with the id resets TTL to 15s"
        );
        let echoed = format!(r#"{{"Items":{{"k":"x"}},"Lock":{{"ID":"{id}","TTL":"10s"}}}}"#);
        let refused = w.call("PUT", "/v1/var/ha/lock", Some(&echoed));
        assert_eq!(
            refused.body,
            "RPC Error:: 400,RPC Error:: 400,variable should not contain lock definition"
        );
    }

    #[test]
    fn a_ttl_outside_ten_seconds_to_a_day_is_refused() {
        let mut w = World::new();
        for ttl in ["9s", "24h0m1s"] {
            let reply = w.call(
                "PUT",
                "/v1/var/ha/lock?lock-acquire",
                Some(&format!(r#"{{"Lock":{{"TTL":"{ttl}"}}}}"#)),
            );
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (400, "RPC Error:: 400,TTL must be between 10 seconds and 24 hours")
            );
        }
        let bad = w.call("PUT", "/v1/var/ha/lock?lock-acquire", Some(r#"{"Lock":{"TTL":"abc"}}"#));
        assert_eq!((bad.status, bad.body.as_str()), (400, "time: invalid duration \"abc\""));
        let nanos = w.json("PUT", "/v1/var/ha/lock?lock-acquire", Some(r#"{"Lock":{"TTL":20000000000}}"#));
        assert_eq!(nanos.1["Lock"]["TTL"], "20s", "a number is nanoseconds");
    }

    #[test]
    fn a_lock_expires_at_twice_its_ttl_and_is_removed_after_the_lock_delay() {
        let mut w = World::new();
        let (_, held) = w.acquire(r#"{"Lock":{"TTL":"10s","LockDelay":"20s"},"Items":{"k":"v"}}"#);
        let renew = format!(r#"{{"Lock":{{"ID":"{}"}}}}"#, held["Lock"]["ID"].as_str().unwrap());
        w.pass(Duration::from_secs(19));
        let renewed = w.call("PUT", "/v1/var/ha/lock?lock-renew", Some(&renew));
        assert_eq!((renewed.status, renewed.index), (200, None), "renew sets no index");
        w.pass(Duration::from_secs(19));
        assert_eq!(
            w.call("PUT", "/v1/var/ha/lock?lock-renew", Some(&renew)).status,
            200,
            "alive 19 s after a renew"
        );
        w.pass(Duration::from_secs(21));
        let late = w.call("PUT", "/v1/var/ha/lock?lock-renew", Some(&renew));
        assert_eq!((late.status, late.body.as_str()), (409, "attempting to modify locked variable"));
        assert_eq!(
            w.call("PUT", "/v1/var/ha/lock?lock-acquire", Some("{}")).status,
            409,
            "still held during the delay"
        );
        let events = w.events.len();
        w.pass(Duration::from_secs(19));
        assert_eq!(w.events.len(), events + 1, "the removal is a write");
        let (_, after) = w.json("GET", "/v1/var/ha/lock", None);
        assert!(after.get("Lock").is_none(), "{after}");
        assert_eq!(after["Items"]["k"], "v", "the items stay");
        assert_eq!(w.acquire("{}").0, 200);
    }

    #[test]
    fn renew_and_release_errors_are_nomads() {
        let mut w = World::new();
        let no_id = w.call("PUT", "/v1/var/ha/lock?lock-renew", Some("{}"));
        assert_eq!((no_id.status, no_id.body.as_str()), (500, "1 error occurred:\n\t* missing lock ID\n\n"));
        let missing = w.call("PUT", "/v1/var/ha/lock?lock-renew", Some(r#"{"Lock":{"ID":"x"}}"#));
        assert_eq!((missing.status, missing.body.as_str()), (404, "variable doesn't exist"));
        w.call("PUT", "/v1/var/ha/lock", Some(r#"{"Items":{"k":"v"}}"#));
        let unlocked = w.call("PUT", "/v1/var/ha/lock?lock-renew", Some(r#"{"Lock":{"ID":"x"}}"#));
        assert_eq!((unlocked.status, unlocked.body.as_str()), (409, "variable doesn't hold a lock"));
        let release = w.call("PUT", "/v1/var/ha/lock?lock-release", Some(r#"{"Lock":{"ID":"x"}}"#));
        assert_eq!((release.status, release.body.as_str()), (500, "variable doesn't hold a lock"));
        let with_items =
            w.call("PUT", "/v1/var/ha/lock?lock-release", Some(r#"{"Lock":{"ID":"x"},"Items":{}}"#));
        assert_eq!(with_items.body, "RPC Error:: 400,lock release operation doesn't take variable items");
        assert_eq!(
            w.call("PUT", "/v1/var/ha/lock?lock-release", Some("{}")).body,
            "RPC Error:: 400,missing lock information"
        );
    }

    #[test]
    fn release_frees_the_lock_at_once_and_keeps_the_items() {
        let mut w = World::new();
        let (_, held) = w.acquire(r#"{"Items":{"k":"v"}}"#);
        let id = held["Lock"]["ID"].as_str().unwrap().to_owned();
        let wrong = w.call("PUT", "/v1/var/ha/lock?lock-release", Some(r#"{"Lock":{"ID":"wrong"}}"#));
        assert_eq!(wrong.status, 409);
        let (status, released) =
            w.json("PUT", "/v1/var/ha/lock?lock-release", Some(&format!(r#"{{"Lock":{{"ID":"{id}"}}}}"#)));
        assert_eq!(status, 200);
        assert!(released.get("Lock").is_none() && released.get("Items").is_none(), "{released}");
        assert_eq!(w.json("GET", "/v1/var/ha/lock", None).1["Items"]["k"], "v");
        assert_eq!(w.acquire(r#"{"Items":{"k":"w"}}"#).0, 200, "no lock delay after a release");
    }

    #[test]
    fn acquire_without_items_erases_them() {
        let mut w = World::new();
        w.call("PUT", "/v1/var/ha/lock", Some(r#"{"Items":{"k":"v"}}"#));
        assert_eq!(w.acquire("{}").0, 200);
        assert!(w.json("GET", "/v1/var/ha/lock", None).1.get("Items").is_none());
    }

    #[test]
    fn delete_and_list() {
        let mut w = World::new();
        for path in ["a/1", "a/2", "a/3", "b/1"] {
            w.call("PUT", &format!("/v1/var/{path}"), Some(r#"{"Items":{"k":"v"}}"#));
        }
        let page = w.call("GET", "/v1/vars?prefix=a/&per_page=2", None);
        let listed: Value = serde_json::from_str(&page.body).unwrap();
        assert_eq!(listed.as_array().map(Vec::len), Some(2));
        assert!(listed[0].get("Items").is_none());
        assert_eq!(page.next_token.as_deref(), Some("default.a/3"));
        let rest = w.call("GET", "/v1/vars?prefix=a/&per_page=2&next_token=default.a/3", None);
        assert_eq!((rest.body.matches("Path").count(), rest.next_token), (1, None));
        let deleted = w.call("DELETE", "/v1/var/a/1", None);
        assert_eq!((deleted.status, deleted.index), (204, Some(w.index)));
        assert!(w.events.last().unwrap().payload.ends_with(r#""Deleted":true}"#));
        assert_eq!(w.call("POST", "/v1/vars", None).status, 405);
        assert_eq!(w.call("HEAD", "/v1/var/a/2", None).body, "Invalid method");
        assert_eq!(w.call("GET", "/v1/var/", None).body, "missing variable path");
    }

    #[test]
    fn blocking_reads_parse_index_and_wait() {
        let query = crate::query::parse_query("index=5&wait=2s");
        let req = VarRequest { method: "GET", path: "/v1/var/a", query: &query, body: None };
        assert_eq!(Variables::watch(&req), Ok(Watch::Until { min_index: 5, wait: Duration::from_secs(2) }));
        let query = crate::query::parse_query("index=x");
        let req = VarRequest { method: "GET", path: "/v1/var/a", query: &query, body: None };
        assert_eq!(Variables::watch(&req).map_err(|r| r.status), Err(400));
    }

    #[test]
    fn durations_print_as_go_does() {
        for (secs, text) in [(15, "15s"), (60, "1m0s"), (90, "1m30s"), (86_400, "24h0m0s")] {
            assert_eq!(go_duration(Duration::from_secs(secs)), text);
        }
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "");
    }
}
