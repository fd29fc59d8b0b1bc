//! ACL checks of `Event.stream` (spec §5): token resolution, expiry, and the
//! topic → capability table, checked for every requested topic in every
//! requested namespace.

use std::time::SystemTime;

use crate::config::{AclConfig, AclToken};
use crate::query::Topics;

/// What a topic requires.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    /// A namespace capability.
    Capability(&'static str),
    /// Variable search access in the namespace (any `variable-*` capability).
    VariableSearch,
    /// `node:read`.
    NodeRead,
    /// A management token.
    Management,
}

fn need(topic: &str) -> Need {
    match topic {
        "Job" | "Allocation" | "Evaluation" | "Deployment" | "Service" | "CSIPlugin" => {
            Need::Capability("read-job")
        }
        "CSIVolume" => Need::Capability("csi-read-volume"),
        "HostVolume" => Need::Capability("host-volume-read"),
        "Node" => Need::NodeRead,
        "Variable" => Need::VariableSearch,
        // NodePool, ACL*, "*", Operator and any unknown topic.
        _ => Need::Management,
    }
}

/// Resolves the request's token and checks it. `Ok(None)` when ACLs are disabled,
/// `Ok(Some(token))` when allowed, `Err(())` for `Permission denied`.
pub(crate) fn authorize(
    acl: Option<&AclConfig>,
    secret: Option<&str>,
    topics: &Topics,
    namespaces: &[String],
    now: SystemTime,
) -> Result<Option<AclToken>, ()> {
    let Some(acl) = acl else {
        return Ok(None);
    };
    let secret = secret.unwrap_or("");
    let token = acl.tokens.iter().find(|t| t.secret == secret).ok_or(())?;
    if is_expired(token, now) {
        return Err(());
    }
    if token.management {
        return Ok(Some(token.clone()));
    }
    for topic in topics.keys() {
        let ok = match need(topic) {
            Need::Management => false,
            Need::NodeRead => token.node_read,
            Need::Capability(cap) => {
                namespaces.iter().all(|ns| capabilities(token, ns).iter().any(|c| c == cap))
            }
            Need::VariableSearch => {
                namespaces.iter().all(|ns| capabilities(token, ns).iter().any(|c| c.starts_with("variable-")))
            }
        };
        if !ok {
            return Err(());
        }
    }
    Ok(Some(token.clone()))
}

/// The token's capabilities in `ns` (falling back to its `"*"` entry).
fn capabilities<'a>(token: &'a AclToken, ns: &str) -> &'a [String] {
    token
        .namespace_capabilities
        .get(ns)
        .or_else(|| token.namespace_capabilities.get("*"))
        .map_or(&[], Vec::as_slice)
}

/// Whether `token` has expired at `now`.
pub(crate) fn is_expired(token: &AclToken, now: SystemTime) -> bool {
    token.expires_at.is_some_and(|e| e <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{parse_query, parse_topics};
    use std::collections::HashMap;
    use std::time::Duration;

    fn topics(q: &str) -> Topics {
        parse_topics(&parse_query(q)).unwrap()
    }

    fn config() -> AclConfig {
        AclConfig {
            tokens: vec![
                AclToken { secret: "mgmt".into(), management: true, ..AclToken::default() },
                AclToken {
                    secret: "reader".into(),
                    namespace_capabilities: HashMap::from([(
                        "default".to_string(),
                        vec!["read-job".to_string()],
                    )]),
                    node_read: true,
                    ..AclToken::default()
                },
                AclToken {
                    secret: "old".into(),
                    management: true,
                    expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
                    ..AclToken::default()
                },
            ],
        }
    }

    fn check(secret: Option<&str>, q: &str, ns: &[&str]) -> bool {
        let ns: Vec<String> = ns.iter().map(|s| s.to_string()).collect();
        authorize(Some(&config()), secret, &topics(q), &ns, SystemTime::now()).is_ok()
    }

    #[test]
    fn matrix() {
        assert!(authorize(None, None, &topics(""), &[], SystemTime::now()).is_ok());
        assert!(check(Some("mgmt"), "", &["default"]));
        assert!(!check(Some("nope"), "topic=Job", &["default"]));
        assert!(!check(None, "topic=Job", &["default"]));
        assert!(!check(Some("old"), "topic=Job", &["default"]));
        assert!(check(Some("reader"), "topic=Job&topic=Allocation:x&topic=Node", &["default"]));
        assert!(!check(Some("reader"), "topic=Job", &["default", "prod"]));
        assert!(!check(Some("reader"), "", &["default"]));
        assert!(!check(Some("reader"), "topic=NodePool", &["default"]));
        assert!(!check(Some("reader"), "topic=CSIVolume", &["default"]));
        assert!(!check(Some("reader"), "topic=NodeDrain", &["default"]));
    }
}
