//! The operation dispatcher: picks a weighted-random simulated raft operation,
//! plus what every operation shares (its context, event constructors that apply
//! Nomad's Key/FilterKeys/Namespace conventions, and world housekeeping).

use rand::Rng as _;
use rand::rngs::StdRng;

use super::payload;
use super::world::{Alloc, Deployment, Eval, Job, Node, Pool, Service, World, short_hex};
use super::{infra, sched};
use crate::event::{Batch, Event};

pub(super) const MAX_NODES: usize = 16;
pub(super) const MIN_JOBS: usize = 4;
pub(super) const MAX_JOBS: usize = 24;
pub(super) const MAX_ALLOCS: usize = 240;
pub(super) const MAX_NODE_EVENTS: usize = 10;

/// What an operation works on.
pub(crate) struct Ctx<'a> {
    pub rng: &'a mut StdRng,
    pub world: &'a mut World,
    pub namespaces: &'a [String],
    /// The raft index of this operation.
    pub index: u64,
    /// Simulated time, unix nanoseconds.
    pub now: u64,
}

fn event(topic: &str, ty: &str, key: &str, ns: &str, fk: Option<Vec<String>>, payload: String) -> Event {
    Event::new(topic, ty, key, ns, fk, payload)
}

pub(super) fn alloc_event(ty: &str, a: &Alloc) -> Event {
    let fk = Some(vec![a.job_id.clone(), a.deployment_id.clone()]);
    event("Allocation", ty, &a.id, &a.ns, fk, payload::allocation(a))
}

pub(super) fn eval_event(ty: &str, e: &Eval) -> Event {
    let fk = Some(vec![e.job_id.clone(), e.deployment_id.clone()]);
    event("Evaluation", ty, &e.id, &e.ns, fk, payload::evaluation(e))
}

pub(super) fn job_event(ty: &str, j: &Job, deleted: bool) -> Event {
    event("Job", ty, &j.id, &j.ns, None, payload::job(j, deleted))
}

pub(super) fn deployment_event(ty: &str, d: &Deployment) -> Event {
    let fk = Some(vec![d.job_id.clone()]);
    event("Deployment", ty, &d.id, &d.ns, fk, payload::deployment(d))
}

pub(super) fn node_event(ty: &str, n: &Node) -> Event {
    event("Node", ty, &n.id, "", None, payload::node(n))
}

pub(super) fn service_event(ty: &str, s: &Service) -> Event {
    let fk = Some(vec![s.job_id.clone(), s.name.clone()]);
    event("Service", ty, &s.id, &s.ns, fk, payload::service(s))
}

pub(super) fn pool_event(ty: &str, rng: &mut StdRng, p: &Pool) -> Event {
    event("NodePool", ty, &p.name, "", None, payload::pool(p, &short_hex(rng, 44)))
}

#[derive(Debug, Clone, Copy)]
enum Op {
    AllocUpdated,
    PlanResult,
    JobRegistered,
    EvalUpdated,
    NodeStream,
    ServiceRegistration,
    ServiceDeregistration,
    DeploymentStatus,
    DeploymentHealth,
    JobDeregistered,
    NodeRegistration,
    NodeEligibility,
    NodePool,
    DesiredStatus,
}

/// One weighted-random operation.
pub(crate) fn random_operation(ctx: &mut Ctx<'_>) -> Vec<Batch> {
    gc(ctx.world);
    let jobs = live_jobs(ctx.world);
    let plans = if ctx.world.pending_plans.is_empty() { 0 } else { 25 };
    let dereg = if jobs <= MIN_JOBS {
        0
    } else if jobs >= MAX_JOBS - 4 {
        12
    } else {
        3
    };
    let table: [(Op, u32); 14] = [
        (Op::AllocUpdated, 28),
        (Op::PlanResult, 10 + plans),
        (Op::JobRegistered, if jobs < MAX_JOBS { 9 } else { 2 }),
        (Op::EvalUpdated, 12),
        (Op::NodeStream, 9),
        (Op::ServiceRegistration, 7),
        (Op::ServiceDeregistration, 4),
        (Op::DeploymentStatus, if ctx.world.deployments.len() > 8 { 15 } else { 5 }),
        (Op::DeploymentHealth, 4),
        (Op::JobDeregistered, dereg),
        (Op::NodeRegistration, 1),
        (Op::NodeEligibility, 1),
        (Op::NodePool, 1),
        (Op::DesiredStatus, 3),
    ];
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut pick = ctx.rng.random_range(0..total);
    let mut op = Op::AllocUpdated;
    for (candidate, weight) in table {
        if pick < weight {
            op = candidate;
            break;
        }
        pick -= weight;
    }
    let result = match op {
        Op::AllocUpdated => sched::alloc_updated(ctx),
        Op::PlanResult => sched::plan_result(ctx),
        Op::JobRegistered => None,
        Op::EvalUpdated => sched::eval_updated(ctx),
        Op::NodeStream => infra::node_stream(ctx),
        Op::ServiceRegistration => infra::service_registration(ctx),
        Op::ServiceDeregistration => infra::service_deregistration(ctx),
        Op::DeploymentStatus => sched::deployment_status(ctx),
        Op::DeploymentHealth => sched::deployment_health(ctx),
        Op::JobDeregistered => sched::job_deregistered(ctx),
        Op::NodeRegistration => infra::node_registration(ctx),
        Op::NodeEligibility => infra::node_eligibility(ctx),
        Op::NodePool => infra::node_pool(ctx),
        Op::DesiredStatus => sched::desired_status(ctx),
    };
    result.unwrap_or_else(|| sched::job_registered(ctx))
}

/// Forgets stopped jobs without allocations (Nomad's job GC emits nothing for them
/// here) and plans for jobs that no longer exist.
pub(super) fn gc(world: &mut World) {
    let World { jobs, allocs, pending_plans, deployments, .. } = world;
    jobs.retain(|j| !j.stop || allocs.iter().any(|a| a.job_id == j.id));
    deployments.retain(|d| jobs.iter().any(|j| j.id == d.job_id && !j.stop));
    pending_plans
        .retain(|(id, _)| jobs.iter().any(|j| &j.id == id) || allocs.iter().any(|a| &a.job_id == id));
}

pub(super) fn live_jobs(world: &World) -> usize {
    world.jobs.iter().filter(|j| !j.stop).count()
}

/// Queues a plan for `job_id`, replacing an older one for the same job.
pub(super) fn queue_plan(world: &mut World, job_id: &str, eval_id: &str) {
    world.pending_plans.retain(|(id, _)| id != job_id);
    world.pending_plans.push_back((job_id.to_string(), eval_id.to_string()));
}

pub(super) fn one(index: u64, events: Vec<Event>) -> Option<Vec<Batch>> {
    if events.is_empty() { None } else { Some(vec![Batch::new(index, events)]) }
}
