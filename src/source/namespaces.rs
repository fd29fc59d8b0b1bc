//! Watches Nomad's namespace list when the relay subscribes with `namespace = "*"`.
//!
//! Nomad expands `*` to the namespaces that exist when a subscription starts and freezes
//! that list, so events of a namespace created later never reach an open stream. The watcher
//! polls `GET /v1/namespaces` (a blocking query, at most once per `namespace_refresh`) and,
//! when a namespace appears, tells the source to resubscribe at its checkpoint: the new
//! subscription covers it, and the resume logic drops what was already journaled.

use super::TokenSource;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long Nomad may hold a blocking query open.
const BLOCKING_WAIT: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
struct Namespace {
    #[serde(rename = "Name")]
    name: String,
}

/// Polls the namespace list and bumps `changed` whenever a namespace is added.
pub async fn watch_namespaces(
    client: reqwest::Client,
    addresses: Vec<String>,
    token: TokenSource,
    min_interval: Duration,
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut known: Option<BTreeSet<String>> = None;
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
                    Ok(list) => {
                        let names: BTreeSet<String> = list.into_iter().map(|n| n.name).collect();
                        if let Some(previous) = &known {
                            let added: Vec<&String> = names.difference(previous).collect();
                            if !added.is_empty() {
                                info!(
                                    "new Nomad namespace(s) {added:?}: resubscribing so that namespace = \"*\" includes them"
                                );
                                changed.send_modify(|generation| *generation += 1);
                            }
                        }
                        known = Some(names);
                        index = next_index.unwrap_or(index);
                        warned = false;
                    }
                    Err(e) => debug!("unreadable namespace list from {address}: {e}"),
                }
            }
            Ok(Ok(response)) => {
                attempt += 1;
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
                debug!("namespace list from {address} failed: {e}");
            }
            Err(_) => attempt += 1,
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
