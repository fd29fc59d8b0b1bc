//! Routing: which sinks receive which events.
//!
//! With no `[[routes]]`, every event goes to every sink. Otherwise an event goes to the sinks
//! of every route it matches; a route matches when each of its non-empty selectors (topics,
//! types, namespaces, keys) has a glob that matches the event's field. The relay's own
//! `NomadRelay` events (gap markers) go to every sink regardless, so no consumer misses a gap.
//! With high availability, the `Variable` events of the relay's own lease variable (Nomad
//! emits one for each checkpoint it writes) go nowhere.

use crate::config::RouteConfig;
use crate::source::resume::RELAY_TOPIC;
use nomad_relay_sink_api::Envelope;

/// Compiled routes.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
    /// The lease variable, `(namespace, path)`, whose events go nowhere.
    lease_variable: Option<(String, String)>,
}

impl Router {
    /// A router for `routes` (empty: everything everywhere).
    pub fn new(routes: Vec<RouteConfig>) -> Self {
        Router { routes, lease_variable: None }
    }

    /// The same router, sending the `Variable` events of variable `path` in `namespace` nowhere.
    pub fn ignoring_variable(mut self, namespace: &str, path: &str) -> Self {
        self.lease_variable = Some((namespace.to_owned(), path.to_owned()));
        self
    }

    /// Whether `event` goes to the sink named `sink`.
    pub fn routes_to(&self, sink: &str, event: &Envelope) -> bool {
        if let Some((namespace, path)) = &self.lease_variable
            && event.topic == "Variable"
            && &event.key == path
            && &event.namespace == namespace
        {
            return false;
        }
        if self.routes.is_empty() || event.topic == RELAY_TOPIC {
            return true;
        }
        self.routes.iter().any(|route| {
            route.sinks.iter().any(|s| s == sink)
                && selects(&route.topics, &event.topic)
                && selects(&route.types, &event.event_type)
                && selects(&route.namespaces, &event.namespace)
                && selects(&route.keys, &event.key)
        })
    }
}

fn selects(patterns: &[String], value: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|pattern| glob(pattern.as_bytes(), value.as_bytes()))
}

/// Matches `*` (any run) and `?` (any one byte); everything else literally.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, event_type: &str, namespace: &str, key: &str) -> Envelope {
        Envelope {
            topic: topic.into(),
            event_type: event_type.into(),
            key: key.into(),
            namespace: namespace.into(),
            ..Envelope::example()
        }
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    fn route(topics: &[&str], types: &[&str], sinks: &[&str]) -> RouteConfig {
        RouteConfig {
            topics: strings(topics),
            types: strings(types),
            namespaces: vec![],
            keys: vec![],
            sinks: strings(sinks),
        }
    }

    #[test]
    fn globs() {
        assert!(glob(b"*", b""));
        assert!(glob(b"Job*", b"JobRegistered"));
        assert!(glob(b"*Registered", b"JobRegistered"));
        assert!(glob(b"A?L*", b"ACLToken"));
        assert!(!glob(b"Job*", b"Node"));
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(!glob(b"a*b*c", b"aXXbYY"));
    }

    #[test]
    fn no_routes_means_everything_everywhere() {
        let router = Router::new(vec![]);
        assert!(router.routes_to("any", &event("Job", "JobRegistered", "default", "web")));
    }

    #[test]
    fn routes_select_by_every_selector() {
        let router = Router::new(vec![
            route(&["Allocation", "Job"], &["*Registered", "PlanResult"], &["a"]),
            route(&["Node"], &[], &["b"]),
        ]);
        assert!(router.routes_to("a", &event("Job", "JobRegistered", "x", "k")));
        assert!(!router.routes_to("a", &event("Job", "JobDeregistered", "x", "k")));
        assert!(!router.routes_to("b", &event("Job", "JobRegistered", "x", "k")));
        assert!(router.routes_to("b", &event("Node", "NodeDrain", "", "n")));
        assert!(
            router.routes_to("b", &event(RELAY_TOPIC, "GapDetected", "", "")),
            "gap markers reach every sink"
        );
    }

    #[test]
    fn namespace_and_key_selectors_narrow_a_route() {
        let router = Router::new(vec![RouteConfig {
            namespaces: strings(&["team-*", "ops"]),
            keys: strings(&["web-?"]),
            ..route(&[], &[], &["c"])
        }]);
        assert!(router.routes_to("c", &event("Job", "JobRegistered", "team-a", "web-1")));
        assert!(router.routes_to("c", &event("Allocation", "PlanResult", "ops", "web-2")));
        assert!(!router.routes_to("c", &event("Job", "JobRegistered", "default", "web-1")), "namespace");
        assert!(!router.routes_to("c", &event("Job", "JobRegistered", "team-a", "web-10")), "key");
        assert!(!router.routes_to("c", &event("Job", "JobRegistered", "", "web-1")), "no namespace");
        // Every selector must match: a matching key does not make up for the namespace.
        let both = Router::new(vec![RouteConfig {
            topics: strings(&["Job"]),
            namespaces: strings(&["prod"]),
            keys: strings(&["api"]),
            ..route(&[], &[], &["d"])
        }]);
        assert!(both.routes_to("d", &event("Job", "JobDeregistered", "prod", "api")));
        assert!(!both.routes_to("d", &event("Job", "JobDeregistered", "dev", "api")));
        assert!(!both.routes_to("d", &event("Job", "JobDeregistered", "prod", "web")));
        assert!(!both.routes_to("d", &event("Node", "NodeDrain", "prod", "api")));
    }
}
