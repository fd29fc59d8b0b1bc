//! Infrastructure operations: node status and registration, eligibility and
//! drain, node pools, and service registrations.

use rand::Rng as _;
use rand::seq::{IndexedMutRandom as _, IndexedRandom as _};

use super::factory::{make_node, make_service};
use super::ops::{Ctx, MAX_NODE_EVENTS, MAX_NODES, node_event, one, pool_event, service_event};
use super::payload;
use super::world::{Pool, short_hex};
use crate::event::Batch;

/// `NodeStreamEvent`: a node's status changes or it records a node event.
pub(super) fn node_stream(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let i = ctx.rng.random_range(0..ctx.world.nodes.len().max(1));
    let (index, now) = (ctx.index, ctx.now);
    let roll: f64 = ctx.rng.random();
    let node = ctx.world.nodes.get_mut(i)?;
    let (msg, subsystem, details) = if node.status == "down" {
        node.status = "ready";
        node.status_updated_at = now / 1_000_000_000;
        ("Node reregistered by heartbeat", "Cluster", "null")
    } else if roll < 0.15 {
        node.status = "down";
        node.status_updated_at = now / 1_000_000_000;
        ("Node heartbeat missed", "Cluster", "null")
    } else if roll < 0.6 {
        ("Driver: docker healthy", "Driver", r#"{"driver":"docker"}"#)
    } else if roll < 0.8 {
        ("Node reregistered by heartbeat", "Cluster", "null")
    } else {
        ("Fingerprinting updated: cpu, memory", "Cluster", r#"{"fingerprint":"cpu,memory"}"#)
    };
    if node.events.len() >= MAX_NODE_EVENTS {
        node.events.pop_front();
    }
    node.events.push_back(payload::node_event(msg, subsystem, details, now, index));
    node.modify_index = index;
    one(index, vec![node_event("NodeStreamEvent", node)])
}

/// `NodeRegistration`: a new node joins, or an existing one re-registers.
pub(super) fn node_registration(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let (index, now) = (ctx.index, ctx.now);
    if ctx.world.nodes.len() < MAX_NODES && ctx.rng.random_bool(0.5) {
        let pool = ctx.world.pools.choose(ctx.rng).map_or("default".to_string(), |p| p.name.clone());
        let pool = if pool == "all" { "default".to_string() } else { pool };
        let node = make_node(ctx.rng, &pool, index, now);
        ctx.world.nodes.push(node);
        let node = ctx.world.nodes.last()?;
        return one(index, vec![node_event("NodeRegistration", node)]);
    }
    let node = ctx.world.nodes.choose_mut(ctx.rng)?;
    node.status = "ready";
    node.status_updated_at = now / 1_000_000_000;
    if node.events.len() >= MAX_NODE_EVENTS {
        node.events.pop_front();
    }
    node.events.push_back(payload::node_event("Node re-registered", "Cluster", "null", now, index));
    node.modify_index = index;
    one(index, vec![node_event("NodeRegistration", node)])
}

/// `NodeEligibility` (v2.0.1+) or `NodeDrain`: scheduling eligibility flips.
pub(super) fn node_eligibility(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let (index, now) = (ctx.index, ctx.now);
    let drain = ctx.rng.random_bool(0.5);
    let node = ctx.world.nodes.choose_mut(ctx.rng)?;
    let ty = if drain {
        node.drain = !node.drain;
        node.eligibility = if node.drain { "ineligible" } else { "eligible" };
        "NodeDrain"
    } else {
        node.eligibility = if node.eligibility == "eligible" { "ineligible" } else { "eligible" };
        "NodeEligibility"
    };
    let msg = if node.eligibility == "eligible" {
        "Node marked as eligible for scheduling"
    } else {
        "Node marked as ineligible for scheduling"
    };
    if node.events.len() >= MAX_NODE_EVENTS {
        node.events.pop_front();
    }
    node.events.push_back(payload::node_event(msg, "Cluster", "null", now, index));
    node.modify_index = index;
    one(index, vec![node_event(ty, node)])
}

/// `NodePoolUpserted`.
pub(super) fn node_pool(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let index = ctx.index;
    if ctx.world.pools.len() < 5 && ctx.rng.random_bool(0.5) {
        let name = ["gpu", "batch", "edge", "arm64"][ctx.world.pools.len() % 4];
        ctx.world.pools.push(Pool {
            name: format!("{name}-{}", short_hex(ctx.rng, 3)),
            description: format!("{name} nodes"),
            create_index: index,
            modify_index: index,
        });
    }
    let i = ctx.rng.random_range(0..ctx.world.pools.len());
    let pool = &mut ctx.world.pools[i];
    pool.modify_index = index;
    let pool = pool.clone();
    one(index, vec![pool_event("NodePoolUpserted", ctx.rng, &pool)])
}

/// `ServiceRegistration`: running allocations register their services.
pub(super) fn service_registration(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let mut todo: Vec<(usize, String)> = Vec::new();
    for (i, a) in ctx.world.allocs.iter().enumerate() {
        if a.client_status != "running" || a.desired_status != "run" {
            continue;
        }
        let Some(job) = ctx.world.job(&a.job_id) else {
            continue;
        };
        let Some(name) = job.groups.iter().find(|g| g.name == a.group).and_then(|g| g.service.clone()) else {
            continue;
        };
        if !ctx.world.services.iter().any(|s| s.alloc_id == a.id) {
            todo.push((i, name));
        }
    }
    if todo.is_empty() {
        return None;
    }
    let n = ctx.rng.random_range(1..=todo.len().min(3));
    let chosen: Vec<(usize, String)> = todo.choose_multiple(ctx.rng, n).cloned().collect();
    let mut events = Vec::new();
    for (i, name) in chosen {
        let a = ctx.world.allocs[i].clone();
        let Some(job) = ctx.world.job(&a.job_id).cloned() else {
            continue;
        };
        let svc = make_service(ctx, &a, &name, &job);
        events.push(service_event("ServiceRegistration", &svc));
        ctx.world.services.push(svc);
    }
    one(ctx.index, events)
}

/// `ServiceDeregistration`: services of stopped or vanished allocations go away.
pub(super) fn service_deregistration(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let world = &*ctx.world;
    let gone: Vec<usize> = (0..world.services.len())
        .filter(|&i| {
            let s = &world.services[i];
            world.allocs.iter().find(|a| a.id == s.alloc_id).is_none_or(|a| a.desired_status != "run")
        })
        .collect();
    let chosen: Vec<usize> = if gone.is_empty() {
        // A task restart deregisters then re-registers its service.
        let i = ctx.rng.random_range(0..world.services.len().max(1));
        if i >= world.services.len() {
            return None;
        }
        vec![i]
    } else {
        gone.into_iter().take(3).collect()
    };
    let mut events = Vec::new();
    for &i in chosen.iter().rev() {
        let mut s = ctx.world.services.swap_remove(i);
        s.modify_index = ctx.index;
        events.push(service_event("ServiceDeregistration", &s));
    }
    one(ctx.index, events)
}
