//! Constructors of the simulated cluster's entities and the initial world.

use std::collections::VecDeque;

use rand::Rng as _;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;

use super::ops::Ctx;
use super::payload;
use super::world::{Alloc, Eval, Group, Job, JobKind, Node, Pool, Service, World, short_hex, uuid};

const INITIAL_NODES: usize = 8;
const INITIAL_JOBS: usize = 6;
const MAX_TASK_EVENTS: usize = 10;

const JOB_NAMES: &[&str] = &[
    "web",
    "api",
    "billing",
    "cache",
    "worker",
    "ingest",
    "frontend",
    "search",
    "payments",
    "notifier",
    "auth",
    "checkout",
    "inventory",
    "reports",
    "etl",
    "metrics-agent",
    "log-shipper",
];
const GROUP_NAMES: &[&str] = &["api", "web", "worker", "proxy", "cache", "consumer"];
const TASK_NAMES: &[&str] = &["server", "app", "envoy", "log-forwarder", "migrate"];
const PORT_LABELS: &[&str] = &["http", "grpc", "metrics"];

/// A new node.
pub(super) fn make_node(rng: &mut StdRng, pool: &str, index: u64, now: u64) -> Node {
    let ip = format!("10.0.{}.{}", rng.random_range(1..8u32), rng.random_range(2..250u32));
    let name = format!("ip-{}", ip.replace('.', "-"));
    let cores = *[4u32, 8, 16, 32, 48, 64, 96].choose(rng).unwrap_or(&8);
    let body = payload::node_body(rng, &name, &ip, cores);
    let mut events = VecDeque::new();
    events.push_back(payload::node_event("Node registered", "Cluster", "null", now, index));
    Node {
        id: uuid(rng),
        name,
        dc: "dc1".to_string(),
        pool: pool.to_string(),
        ip,
        status: "ready",
        eligibility: "eligible",
        drain: false,
        body,
        events,
        status_updated_at: now / 1_000_000_000,
        create_index: index,
        modify_index: index,
    }
}

/// A new job (not yet in the world).
pub(super) fn make_job(ctx: &mut Ctx<'_>) -> Job {
    let rng = &mut *ctx.rng;
    let name = *JOB_NAMES.choose(rng).unwrap_or(&"web");
    let kind = match name {
        "metrics-agent" | "log-shipper" => JobKind::System,
        "etl" | "reports" => JobKind::Batch,
        _ => JobKind::Service,
    };
    let ns = ctx.namespaces.choose(rng).cloned().unwrap_or_else(|| "default".to_string());
    let ngroups = if kind == JobKind::Service { rng.random_range(1..=3usize) } else { 1 };
    let nodes = ctx.world.nodes.len().max(1) as u32;
    let mut groups: Vec<Group> = Vec::with_capacity(ngroups);
    for gi in 0..ngroups {
        let gname = GROUP_NAMES[(gi + rng.random_range(0..GROUP_NAMES.len())) % GROUP_NAMES.len()];
        if groups.iter().any(|g| g.name == gname) {
            continue;
        }
        let ntasks = rng.random_range(1..=2usize);
        let tasks: Vec<String> = TASK_NAMES.choose_multiple(rng, ntasks).map(|t| t.to_string()).collect();
        let count = match kind {
            JobKind::Service => rng.random_range(1..=4u32),
            JobKind::Batch => rng.random_range(1..=3u32),
            JobKind::System => nodes.min(8),
        };
        groups.push(Group {
            name: gname.to_string(),
            count,
            completed: 0,
            tasks,
            port_label: PORT_LABELS.choose(rng).copied().unwrap_or("http"),
            service: (kind == JobKind::Service).then(|| format!("{name}-{gname}")),
            cpu: rng.random_range(2..=40u32) * 50,
            memory_mb: rng.random_range(2..=64u32) * 64,
        });
    }
    let mut job = Job {
        id: format!("{name}-{}", short_hex(rng, 4)),
        ns,
        kind,
        priority: [50u32, 50, 50, 70, 30].choose(rng).copied().unwrap_or(50),
        version: 0,
        status: "pending",
        stop: false,
        stable: false,
        groups,
        image: format!("registry.example.internal/{name}:1.{}.{}", rng.random_range(0..20u32), 0),
        pool: "default".to_string(),
        spec: String::new(),
        create_index: ctx.index,
        modify_index: ctx.index,
        job_modify_index: ctx.index,
        submit_time: ctx.now,
    };
    job.spec = payload::job_spec(rng, &job);
    job
}

pub(super) fn make_eval(
    ctx: &mut Ctx<'_>,
    job: &Job,
    triggered_by: &'static str,
    status: &'static str,
    deployment_id: &str,
) -> Eval {
    Eval {
        id: uuid(ctx.rng),
        ns: job.ns.clone(),
        priority: job.priority,
        kind: job.kind,
        triggered_by,
        job_id: job.id.clone(),
        job_modify_index: job.job_modify_index,
        node_id: String::new(),
        deployment_id: deployment_id.to_string(),
        status,
        status_description: "",
        previous_eval: String::new(),
        blocked_eval: String::new(),
        queued: job.groups.iter().map(|g| (g.name.clone(), 0)).collect(),
        failed_group: None,
        class_eligibility: (0..ctx.rng.random_range(3..=5))
            .map(|_| {
                (
                    ctx.rng.random_range(1_000_000_000_000_000_000..9_000_000_000_000_000_000),
                    ctx.rng.random_bool(0.8),
                )
            })
            .collect(),
        snapshot_index: ctx.index.saturating_sub(1),
        create_index: ctx.index,
        modify_index: ctx.index,
        create_time: ctx.now,
        modify_time: ctx.now,
    }
}

/// A new pending allocation of `job`'s group `gi`.
pub(super) fn make_alloc(
    ctx: &mut Ctx<'_>,
    job: &Job,
    gi: usize,
    slot: u32,
    eval_id: &str,
    deployment_id: &str,
) -> Alloc {
    let rng = &mut *ctx.rng;
    let nodes = &ctx.world.nodes;
    let node = if job.kind == JobKind::System {
        &nodes[slot as usize % nodes.len()]
    } else {
        nodes
            .iter()
            .filter(|n| n.status == "ready" && n.eligibility == "eligible")
            .collect::<Vec<_>>()
            .choose(rng)
            .copied()
            .unwrap_or(&nodes[0])
    };
    let group = &job.groups[gi];
    let port = rng.random_range(20_000..32_000u32);
    let sample: Vec<String> = nodes.choose_multiple(rng, 3).map(|n| n.id.clone()).collect();
    let resources = payload::alloc_resources(rng, group, &node.ip, port, &sample);
    Alloc {
        id: uuid(rng),
        ns: job.ns.clone(),
        job_id: job.id.clone(),
        job_version: job.version,
        group: group.name.clone(),
        tasks: group.tasks.clone(),
        name: format!("{}.{}[{slot}]", job.id, group.name),
        node_id: node.id.clone(),
        node_name: node.name.clone(),
        eval_id: eval_id.to_string(),
        deployment_id: deployment_id.to_string(),
        client_status: "pending",
        client_description: "",
        desired_status: "run",
        desired_description: "",
        migrate: false,
        healthy: None,
        health_index: 0,
        events: Vec::new(),
        restarts: 0,
        started_at: 0,
        finished_at: 0,
        resources,
        ip: node.ip.clone(),
        port,
        create_index: ctx.index,
        modify_index: ctx.index,
        alloc_modify_index: ctx.index,
        create_time: ctx.now,
        modify_time: ctx.now,
    }
}

pub(super) fn push_task_event(a: &mut Alloc, kind: &str, t: u64, display: &str, exit: i32) {
    if a.events.len() >= MAX_TASK_EVENTS {
        a.events.remove(0);
    }
    a.events.push(payload::task_event(kind, t, display, exit));
}

pub(super) fn start_alloc(a: &mut Alloc, now: u64) {
    push_task_event(a, "Received", now.saturating_sub(3_000_000), "Task received by client", 0);
    push_task_event(a, "Task Setup", now.saturating_sub(2_000_000), "Building Task Directory", 0);
    push_task_event(a, "Driver", now.saturating_sub(1_000_000), "Downloading image", 0);
    push_task_event(a, "Started", now, "Task started by client", 0);
    a.client_status = "running";
    a.client_description = "Tasks are running";
    a.started_at = now;
}

pub(super) fn finish_alloc(a: &mut Alloc, now: u64, status: &'static str, exit: i32) {
    push_task_event(a, "Terminated", now, "Exit Code: 0", exit);
    if status == "failed" {
        push_task_event(a, "Not Restarting", now, "Error was unrecoverable", 0);
        a.client_description = "Failed tasks";
    } else {
        a.client_description = "All tasks have completed";
    }
    a.client_status = status;
    a.finished_at = now;
}

/// The cluster before the first generated operation: nodes, a few running jobs.
pub(crate) fn initial_world(rng: &mut StdRng, namespaces: &[String], now: u64) -> World {
    let mut world = World::default();
    world.pools.push(Pool {
        name: "default".into(),
        description: "Default node pool".into(),
        create_index: 1,
        modify_index: 1,
    });
    world.pools.push(Pool {
        name: "all".into(),
        description: "Node pool with all nodes in the cluster.".into(),
        create_index: 1,
        modify_index: 1,
    });
    for i in 0..INITIAL_NODES {
        let node = make_node(rng, "default", 10 + i as u64, now);
        world.nodes.push(node);
    }
    for i in 0..INITIAL_JOBS {
        let mut ctx = Ctx { rng, world: &mut world, namespaces, index: 30 + 10 * i as u64, now };
        let mut job = make_job(&mut ctx);
        if ctx.world.job(&job.id).is_some() {
            continue;
        }
        job.status = "running";
        job.stable = true;
        let eval_id = uuid(ctx.rng);
        for gi in 0..job.groups.len() {
            for slot in 0..job.groups[gi].count {
                let mut a = make_alloc(&mut ctx, &job, gi, slot, &eval_id, "");
                start_alloc(&mut a, now);
                if let Some(name) = job.groups[gi].service.clone() {
                    let svc = make_service(&mut ctx, &a, &name, &job);
                    ctx.world.services.push(svc);
                }
                ctx.world.allocs.push(a);
            }
        }
        world.jobs.push(job);
    }
    world
}

pub(super) fn make_service(ctx: &mut Ctx<'_>, a: &Alloc, name: &str, job: &Job) -> Service {
    Service {
        id: format!("_nomad-task-{}-group-{}-{}-{}", a.id, a.group, name, "http"),
        name: name.to_string(),
        ns: a.ns.clone(),
        node_id: a.node_id.clone(),
        dc: "dc1".into(),
        job_id: a.job_id.clone(),
        alloc_id: a.id.clone(),
        tags: vec!["traefik.enable=true".into(), format!("version={}", job.version)],
        address: a.ip.clone(),
        port: a.port,
        create_index: ctx.index,
        modify_index: ctx.index,
    }
}
