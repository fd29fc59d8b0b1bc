//! The lease: a lock that at most one instance of a relay group holds, on a variable whose
//! items carry the shared checkpoint. [`Lease`] is what the roles need of it; [`NomadLease`]
//! keeps it in Nomad's Variables with their lock API.
//!
//! Nomad's rules, as its source defines them (`docs/nomad-variables.md` cites each one in
//! hashicorp/nomad's `command/agent/variable_endpoint.go`, `nomad/variables_endpoint.go`,
//! `nomad/state/state_store_variables.go` and `nomad/locks.go`):
//!
//! - `PUT /v1/var/<path>?lock-acquire` with `{"Lock":{"TTL":..,"LockDelay":..,"ID":..}}`
//!   locks the variable and replaces its items with the request's; it answers 409 while
//!   another id holds the lock, and succeeds again for the holder's own id (so the holder
//!   writes the checkpoint with it: a plain write carrying the lock id would reset TTL and lock
//!   delay to 15 s, and one that gives them is refused).
//! - `?lock-renew` restarts the lock's timer; a lock not renewed for 2 × TTL expires, stays
//!   held for the lock delay, and is then removed (a write, which wakes blocking reads).
//!   Renewing an expired lock answers 409.
//! - `?lock-release` removes it at once, with no delay.
//! - A `GET` with `index` blocks until the variable's `ModifyIndex` passes it (at most `wait`).
//!   The lock is shown only to management tokens, so the roles never rely on seeing it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{HaConfig, NomadConfig};
use crate::source::TokenSource;

/// What went wrong with a lease request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Another instance holds the lock (409 on acquire).
    #[error("the lease is held by another instance")]
    Held,
    /// This instance's lock is gone: expired, removed, or taken (409 or 404 on renew).
    #[error("the lease was lost: {0}")]
    Lost(String),
    /// The server refused the request itself (400, 403): a configuration the operator must
    /// change, such as a TTL under Nomad's 10 s or a token without `variables` write access.
    #[error("{0}")]
    Refused(String),
    /// The server could not be reached or failed (a transport error, 5xx).
    #[error("{0}")]
    Unreachable(String),
}

/// The lease variable as a read found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether the variable exists.
    pub exists: bool,
    /// Its items (the shared checkpoint).
    pub items: BTreeMap<String, String>,
    /// Its `ModifyIndex`, for the next blocking read (the store's index when it is missing).
    pub index: u64,
}

/// What the roles need of a lease store.
pub trait Lease: Send {
    /// Reads the variable; with `after`, waits (at most `wait`) until its index passes it.
    fn read(
        &mut self,
        after: Option<u64>,
        wait: Duration,
    ) -> impl Future<Output = Result<Observed, LeaseError>> + Send;
    /// Takes the lock (or, when this instance holds it, keeps it) and sets the items.
    fn acquire(
        &mut self,
        items: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Renews the held lock.
    fn renew(&mut self) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Releases the held lock (on a clean stop).
    fn release(&mut self) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Where the lease lives, for log lines (`nomad variable default/nomad-relay/leader`).
    fn describe(&self) -> String;
}

/// A lease on a Nomad variable.
pub struct NomadLease {
    client: reqwest::Client,
    addresses: Vec<String>,
    address: usize,
    token: TokenSource,
    region: Option<String>,
    path: String,
    namespace: String,
    ttl: Duration,
    lock_delay: Duration,
    /// This instance's lock id, chosen once per process and sent on every acquire, so a
    /// re-acquire by the holder succeeds and no other instance's does.
    lock_id: String,
}

/// The parts of Nomad's `VariableDecrypted` the lease reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Variable {
    #[serde(default)]
    items: Option<BTreeMap<String, String>>,
    #[serde(default)]
    modify_index: u64,
}

impl NomadLease {
    /// A lease on `ha.path` in `ha.namespace`, reached as `source` is; `lock_id` names this
    /// instance (a UUID-shaped string, as Nomad generates them).
    pub fn new(ha: &HaConfig, source: &NomadConfig, lock_id: String) -> Result<NomadLease, String> {
        let client = crate::source::http_client(source).map_err(|e| e.to_string())?;
        Ok(NomadLease {
            client,
            addresses: source.address.to_vec(),
            address: 0,
            token: TokenSource::from_config(source),
            region: source.region.clone(),
            path: ha.path.trim_matches('/').to_owned(),
            namespace: ha.namespace.clone(),
            ttl: ha.ttl.0,
            lock_delay: ha.lock_delay.0,
            lock_id,
        })
    }

    /// This instance's lock id.
    pub fn lock_id(&self) -> &str {
        &self.lock_id
    }

    /// A request to the variable, with the namespace, region, token and `extra` query.
    async fn request(
        &self,
        method: reqwest::Method,
        extra: &[(&str, String)],
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, LeaseError> {
        let base = self.addresses[self.address % self.addresses.len()].trim_end_matches('/');
        let url = format!("{base}/v1/var/{}", self.path);
        let mut query: Vec<(&str, String)> = vec![("namespace", self.namespace.clone())];
        if let Some(region) = &self.region {
            query.push(("region", region.clone()));
        }
        query.extend(extra.iter().cloned());
        let mut request = self.client.request(method, url).query(&query).timeout(timeout);
        if let Some(token) = self.token.read().await.map_err(LeaseError::Refused)? {
            request = request.header("X-Nomad-Token", token);
        }
        Ok(request)
    }

    /// Sends `request`; a transport failure moves to the next address.
    async fn send(&mut self, request: reqwest::RequestBuilder) -> Result<(u16, String), LeaseError> {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.map_err(|e| self.unreachable(&e))?;
                Ok((status, body))
            }
            Err(error) => Err(self.unreachable(&error)),
        }
    }

    fn unreachable(&mut self, error: &reqwest::Error) -> LeaseError {
        let address = self.addresses[self.address % self.addresses.len()].clone();
        self.address = self.address.wrapping_add(1);
        LeaseError::Unreachable(format!("cannot reach Nomad's Variables API at {address}: {error}"))
    }

    /// The lock as an acquire or renew sends it: TTL and delay as Go durations.
    fn lock_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ID": self.lock_id,
            "TTL": format!("{}ms", self.ttl.as_millis()),
            "LockDelay": format!("{}ms", self.lock_delay.as_millis()),
        })
    }

    /// A request's time limit: short enough that a renewal cannot outlive the fence.
    fn short_timeout(&self) -> Duration {
        self.ttl.mul_f64(0.3).max(Duration::from_millis(200))
    }

    /// The error an unexpected answer to `what` is.
    fn unexpected(&self, what: &str, status: u16, body: &str) -> LeaseError {
        let text = format!(
            "Nomad answered {what} on variable {}/{} with {status}: {}",
            self.namespace,
            self.path,
            body.trim()
        );
        match status {
            400 | 403 => LeaseError::Refused(format!(
                "{text} (check `[ha]` ttl (Nomad accepts 10s to 24h), path, namespace, and that the token may write variables at the path)"
            )),
            _ => LeaseError::Unreachable(text),
        }
    }
}

impl Lease for NomadLease {
    async fn read(&mut self, after: Option<u64>, wait: Duration) -> Result<Observed, LeaseError> {
        let mut extra = Vec::new();
        let mut timeout = self.short_timeout().max(Duration::from_secs(5));
        if let Some(index) = after {
            extra.push(("index", index.to_string()));
            extra.push(("wait", format!("{}ms", wait.as_millis())));
            // Nomad adds up to wait/16 of jitter.
            timeout += wait + wait / 16;
        }
        let request = self.request(reqwest::Method::GET, &extra, timeout).await?;
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Err(self.unreachable(&error)),
        };
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let body = response.text().await.map_err(|e| self.unreachable(&e))?;
        match status {
            200 => {
                let variable: Variable = serde_json::from_str(&body).map_err(|e| {
                    LeaseError::Unreachable(format!("Nomad sent a variable this relay cannot read: {e}"))
                })?;
                Ok(Observed {
                    exists: true,
                    items: variable.items.unwrap_or_default(),
                    index: variable.modify_index.max(index),
                })
            }
            404 => Ok(Observed { exists: false, items: BTreeMap::new(), index }),
            _ => Err(self.unexpected("a read", status, &body)),
        }
    }

    async fn acquire(&mut self, items: &BTreeMap<String, String>) -> Result<(), LeaseError> {
        let body = serde_json::json!({
            "Namespace": self.namespace,
            "Path": self.path,
            "Items": if items.is_empty() { None } else { Some(items) },
            "Lock": self.lock_json(),
        });
        let request = self
            .request(reqwest::Method::PUT, &[("lock-acquire", String::new())], self.short_timeout())
            .await?;
        match self.send(request.json(&body)).await? {
            (200, _) => Ok(()),
            (409, _) => Err(LeaseError::Held),
            (status, body) => Err(self.unexpected("a lock acquire", status, &body)),
        }
    }

    async fn renew(&mut self) -> Result<(), LeaseError> {
        let body =
            serde_json::json!({ "Namespace": self.namespace, "Path": self.path, "Lock": self.lock_json() });
        let request = self
            .request(reqwest::Method::PUT, &[("lock-renew", String::new())], self.short_timeout())
            .await?;
        match self.send(request.json(&body)).await? {
            (200, _) => Ok(()),
            (404 | 409, text) => {
                Err(LeaseError::Lost(format!("Nomad answered the renewal: {}", text.trim())))
            }
            (status, body) => Err(self.unexpected("a lock renewal", status, &body)),
        }
    }

    async fn release(&mut self) -> Result<(), LeaseError> {
        let body = serde_json::json!({ "Namespace": self.namespace, "Path": self.path, "Lock": { "ID": self.lock_id } });
        let request = self
            .request(reqwest::Method::PUT, &[("lock-release", String::new())], self.short_timeout())
            .await?;
        match self.send(request.json(&body)).await? {
            (200, _) => Ok(()),
            (409, _) => Err(LeaseError::Held),
            (status, body) => Err(self.unexpected("a lock release", status, &body)),
        }
    }

    fn describe(&self) -> String {
        format!("Nomad variable {}/{}", self.namespace, self.path)
    }
}
