//! Watches Nomad's namespace list when the relay subscribes with `namespace = "*"`.
//!
//! Nomad expands `*` to the namespaces that exist when a subscription starts and freezes
//! that list, so events of a namespace created later never reach an open stream. The watcher
//! polls `GET /v1/namespaces` (a blocking query; again at once after a change, else at most
//! once per `namespace_refresh`) and
//! publishes every namespace with its `CreateIndex`; the source decides what a new one needs
//! (a resubscription, or a catch-up from its `CreateIndex`: [`super::catch_up`]). The source
//! waits for the first answer before it subscribes, so that it knows which namespaces its
//! first subscription can include.

use super::TokenSource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How soon the list is asked for again after an answer that changed it.
const REPOLL_AFTER_CHANGE: Duration = Duration::from_millis(250);

/// How long Nomad may hold a blocking query open.
const BLOCKING_WAIT: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
struct Namespace {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "CreateIndex", default)]
    create_index: u64,
}

/// What the watcher knows of Nomad's namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// Whether the first attempt to list them is over (successful or not).
    pub answered: bool,
    /// Whether a list was read: until then `created` is unknown, not empty.
    pub listed: bool,
    /// Each namespace's `CreateIndex`, by name.
    pub created: BTreeMap<String, u64>,
}

/// Polls the namespace list and publishes it in `list` whenever it changes.
pub async fn watch_namespaces(
    client: reqwest::Client,
    addresses: Vec<String>,
    token: TokenSource,
    min_interval: Duration,
    list: watch::Sender<Namespaces>,
    shutdown: CancellationToken,
) {
    let mut index = 0u64;
    let mut attempt = 0usize;
    let mut warned = false;
    loop {
        let address = addresses[attempt % addresses.len()].trim_end_matches('/').to_owned();
        let url = format!("{address}/v1/namespaces?index={index}&wait={}s", BLOCKING_WAIT.as_secs());
        let mut request = client.get(&url);
        if let Ok(Some(token)) = token.read().await {
            request = request.header("X-Nomad-Token", token);
        }
        let response = tokio::select! {
            _ = shutdown.cancelled() => return,
            response = tokio::time::timeout(BLOCKING_WAIT + Duration::from_secs(15), request.send()) => response,
        };
        let mut delay = min_interval;
        match response {
            Ok(Ok(response)) if response.status().is_success() => {
                let next_index = response
                    .headers()
                    .get("X-Nomad-Index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let body = response.bytes().await.unwrap_or_default();
                match serde_json::from_slice::<Vec<Namespace>>(&body) {
                    Ok(namespaces) => {
                        let created: BTreeMap<String, u64> =
                            namespaces.into_iter().map(|n| (n.name, n.create_index)).collect();
                        list.send_if_modified(|known| {
                            let changed = !known.listed || known.created != created;
                            if known.listed {
                                let added: Vec<&String> = created
                                    .keys()
                                    .filter(|name| !known.created.contains_key(*name))
                                    .collect();
                                if !added.is_empty() {
                                    info!("new Nomad namespace(s) {added:?}");
                                }
                            }
                            *known = Namespaces { answered: true, listed: true, created: created.clone() };
                            changed
                        });
                        // The table changed: ask again soon (the query then blocks until the
                        // next change), so a new namespace is heard of within moments; not at
                        // once, in case a server answers without blocking.
                        if next_index.is_some_and(|next| next > index) {
                            delay = REPOLL_AFTER_CHANGE.min(min_interval);
                        }
                        index = next_index.unwrap_or(index);
                        warned = false;
                    }
                    Err(e) => {
                        answered(&list);
                        debug!("unreadable namespace list from {address}: {e}");
                    }
                }
            }
            Ok(Ok(response)) => {
                attempt += 1;
                answered(&list);
                delay = min_interval.max(Duration::from_secs(60));
                if !warned {
                    warned = true;
                    warn!(
                        "cannot list Nomad's namespaces (HTTP {}): with namespace = \"*\", namespaces created after the stream connected are missed until it reconnects; grant the token `namespace \"*\" {{ policy = \"read\" }}` or list namespaces explicitly",
                        response.status()
                    );
                }
            }
            Ok(Err(e)) => {
                attempt += 1;
                answered(&list);
                debug!("namespace list from {address} failed: {e}");
            }
            Err(_) => {
                attempt += 1;
                answered(&list);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Marks the first attempt as over, so the source does not wait for a list it cannot have.
fn answered(list: &watch::Sender<Namespaces>) {
    list.send_if_modified(|known| !std::mem::replace(&mut known.answered, true));
}
