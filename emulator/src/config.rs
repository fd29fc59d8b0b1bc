//! Configuration and fault-injection types: [`EmulatorConfig`], [`Framing`],
//! [`AclConfig`], [`AclToken`], [`Cut`] and [`Reject`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Which generation of Nomad's HTTP layer to emulate (spec §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Nomad ≥ 1.11.2 (all 2.0.x): hijacked connection, `200 OK` written before
    /// authentication, `Connection: close`, body delimited by closing the socket,
    /// never compressed, errors after the status line are a bare close.
    #[default]
    Modern,
    /// Nomad ≤ 1.11.1: `Transfer-Encoding: chunked`, gzip/deflate when asked, headers
    /// sent with the first `{}`, ACL denial as a real status with a text body,
    /// mid-stream errors appended as text without a newline.
    Legacy,
}

/// Settings of one emulated Nomad server.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// HTTP layer to emulate.
    pub framing: Framing,
    /// Heartbeat period of the free-running ticker (not reset by data). Default 30 s.
    pub heartbeat_interval: Duration,
    /// `event_buffer_size`, in batches (lines). Default 100; `0` means 100, as in Nomad.
    pub buffer_size: usize,
    /// Per-write deadline of the modern framing (Nomad's `writeTimeout`, 40 s). A write
    /// that takes longer closes the connection. Legacy servers had no deadline, so the
    /// legacy framing ignores it.
    pub write_deadline: Duration,
    /// Namespaces that exist (what `namespace=*` expands to). Default `["default"]`.
    pub namespaces: Vec<String>,
    /// ACL system; `None` means ACLs are disabled and everything is allowed.
    pub acl: Option<AclConfig>,
    /// `Some(seed)`: every body write is split into random-size pieces (biased to small
    /// ones), each written and flushed separately with `TCP_NODELAY`, so readers see
    /// lines (and chunk framing) split at random byte offsets.
    pub fragment_writes: Option<u64>,
    /// Status of an ACL denial in the legacy framing: 403 (v1.9.6+, default) or 500.
    pub legacy_denial_status: u16,
    /// The shortest variable lock TTL accepted. Nomad's is 10 s (`minLockTTL` in
    /// `nomad/structs/variables.go`), the default; a test-only setting below it keeps
    /// failover tests fast. Nomad has no such option.
    pub min_lock_ttl: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            framing: Framing::Modern,
            heartbeat_interval: Duration::from_secs(30),
            buffer_size: 100,
            write_deadline: Duration::from_secs(40),
            namespaces: vec!["default".to_string()],
            acl: None,
            fragment_writes: None,
            legacy_denial_status: 403,
            min_lock_ttl: crate::variables::NOMAD_MIN_LOCK_TTL,
        }
    }
}

/// The ACL system of the emulated cluster.
#[derive(Debug, Clone, Default)]
pub struct AclConfig {
    /// Known tokens. A token whose `secret` is `""` stands for the anonymous policy
    /// (used when a request carries no token); without one, anonymous requests are denied.
    pub tokens: Vec<AclToken>,
}

/// One ACL token and what it may read.
#[derive(Debug, Clone, Default)]
pub struct AclToken {
    /// The secret sent in `X-Nomad-Token` or `Authorization: Bearer`.
    pub secret: String,
    /// Management tokens may do everything.
    pub management: bool,
    /// Namespace → capabilities, e.g. `"default" → ["read-job", "csi-read-volume",
    /// "host-volume-read", "variable-search"]`. The key `"*"` applies to every namespace
    /// without an entry of its own.
    pub namespace_capabilities: HashMap<String, Vec<String>>,
    /// `node { policy = "read" }`.
    pub node_read: bool,
    /// Expiry; an expired token is denied at subscribe time and ends a running stream
    /// with `ACL token expired` before the next data batch.
    pub expires_at: Option<SystemTime>,
}

/// How [`crate::Emulator::cut_connections`] ends open streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Close every open stream now, between lines: modern = EOF; legacy = the text
    /// `subscription closed by server, client should resubscribe` (no newline) and the
    /// end of the chunked body.
    Clean,
    /// Each open stream writes only the first half of its next data line, then closes
    /// the socket without ending the body.
    MidLine,
}

/// A failure every new subscription meets (see [`crate::Emulator::set_reject`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// As if the token lacked permission: modern = `200` then close with an empty body;
    /// legacy = the configured denial status with body `Permission denied`.
    PermissionDenied,
    /// A 500-coded RPC error (e.g. `No path to region`): modern = `200` then close;
    /// legacy = `500` with the text as body.
    ServerError(String),
}
