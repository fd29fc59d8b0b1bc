//! Scheduling operations: job registration and deregistration, plans,
//! allocation updates, evaluations and deployments.

use rand::Rng as _;
use rand::seq::IndexedRandom as _;

use super::factory::{finish_alloc, make_alloc, make_eval, make_job, push_task_event, start_alloc};
use super::ops::{
    Ctx, MAX_ALLOCS, MAX_JOBS, MIN_JOBS, alloc_event, deployment_event, eval_event, job_event, one,
    queue_plan,
};
use super::payload;
use super::world::{Deployment, Job, JobKind, World, short_hex, uuid};
use crate::event::Batch;

/// `JobRegistered`: a Job frame, then an Evaluation frame with the same index.
pub(super) fn job_registered(ctx: &mut Ctx<'_>) -> Vec<Batch> {
    let n = ctx.world.jobs.len();
    let live: Vec<usize> = (0..n).filter(|&i| !ctx.world.jobs[i].stop).collect();
    let create = live.len() < MIN_JOBS || (live.len() < MAX_JOBS && ctx.rng.random_bool(0.5));
    let pos = match live.choose(ctx.rng).copied() {
        Some(i) if !create => {
            let index = ctx.index;
            let rng = &mut *ctx.rng;
            let job = &mut ctx.world.jobs[i];
            job.version += 1;
            job.stable = false;
            for g in &mut job.groups {
                g.completed = 0;
            }
            job.image = format!(
                "{}:1.{}.{}",
                job.image.split(':').next().unwrap_or("app"),
                rng.random_range(0..20u32),
                job.version
            );
            job.modify_index = index;
            job.job_modify_index = index;
            job.spec = payload::job_spec(rng, job);
            i
        }
        _ => {
            let job = make_job(ctx);
            match ctx.world.jobs.iter().position(|j| j.id == job.id) {
                Some(i) => i,
                None => {
                    ctx.world.jobs.push(job);
                    ctx.world.jobs.len() - 1
                }
            }
        }
    };
    ctx.world.jobs[pos].submit_time = ctx.now;
    let job = ctx.world.jobs[pos].clone();
    let eval = make_eval(ctx, &job, "job-register", "pending", "");
    queue_plan(ctx.world, &job.id, &eval.id);
    vec![
        Batch::new(ctx.index, vec![job_event("JobRegistered", &job, false)]),
        Batch::new(ctx.index, vec![eval_event("JobRegistered", &eval)]),
    ]
}

/// `JobDeregistered`: stop (or purge) a job: a Job frame then an Evaluation frame.
pub(super) fn job_deregistered(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let live: Vec<usize> = (0..ctx.world.jobs.len()).filter(|&i| !ctx.world.jobs[i].stop).collect();
    let i = *live.choose(ctx.rng)?;
    let purge = ctx.rng.random_bool(0.3);
    let job = &mut ctx.world.jobs[i];
    job.stop = true;
    job.modify_index = ctx.index;
    job.job_modify_index = ctx.index;
    let job = if purge { ctx.world.jobs.swap_remove(i) } else { job.clone() };
    let eval = make_eval(ctx, &job, "job-deregister", "pending", "");
    queue_plan(ctx.world, &job.id, &eval.id);
    Some(vec![
        Batch::new(ctx.index, vec![job_event("JobDeregistered", &job, purge)]),
        Batch::new(ctx.index, vec![eval_event("JobDeregistered", &eval)]),
    ])
}

/// `PlanResult`: placements (and stops) for a registered job, with its deployment,
/// the evaluation, and the job when its status changes.
pub(super) fn plan_result(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let (job_id, eval_id) = match ctx.world.pending_plans.pop_front() {
        Some(plan) => plan,
        None => {
            // Queued allocations: a job short of its count gets a new plan.
            let short: Vec<String> = ctx
                .world
                .jobs
                .iter()
                .filter(|j| !j.stop && !missing(ctx.world, j, usize::MAX).is_empty())
                .map(|j| j.id.clone())
                .collect();
            (short.choose(ctx.rng)?.clone(), uuid(ctx.rng))
        }
    };
    let index = ctx.index;
    let now = ctx.now;
    let job = ctx.world.job(&job_id).cloned();
    let mut events = Vec::new();
    let mut stopped = Vec::new();

    // Stops: every live alloc of a stopped/purged job, and allocs of older versions.
    for a in ctx.world.allocs.iter_mut().filter(|a| a.job_id == job_id) {
        let outdated = job.as_ref().is_none_or(|j| j.stop || a.job_version < j.version);
        if outdated && a.desired_status == "run" && !a.terminal() {
            a.desired_status = "stop";
            a.desired_description = if job.as_ref().is_some_and(|j| !j.stop) {
                "alloc is being updated due to job update"
            } else {
                "alloc not needed due to job update"
            };
            a.modify_index = index;
            a.alloc_modify_index = index;
            a.modify_time = now;
            stopped.push(alloc_event("PlanResult", a));
        }
    }
    let Some(job) = job.filter(|j| !j.stop) else {
        if stopped.is_empty() {
            return None;
        }
        let placeholder = ctx.world.jobs.first().cloned();
        events.extend(stopped);
        if let Some(j) = placeholder {
            let mut e = make_eval(ctx, &j, "job-deregister", "complete", "");
            e.id = eval_id;
            e.job_id = job_id;
            events.push(eval_event("PlanResult", &e));
        }
        return one(index, events);
    };

    // Placements.
    let budget = if ctx.world.allocs.len() > MAX_ALLOCS { 1 } else { 10 };
    let wanted = missing(ctx.world, &job, budget);
    if wanted.is_empty() && stopped.is_empty() {
        return None;
    }
    let mut deployment_id = String::new();
    if job.kind == JobKind::Service && !wanted.is_empty() {
        let d = match ctx.world.deployment_for(&job.id) {
            Some(di) => &mut ctx.world.deployments[di],
            None => {
                let d = Deployment {
                    id: uuid(ctx.rng),
                    ns: job.ns.clone(),
                    job_id: job.id.clone(),
                    job_version: job.version,
                    job_modify_index: job.job_modify_index,
                    job_create_index: job.create_index,
                    priority: job.priority,
                    status: "running",
                    description: "Deployment is running",
                    groups: job.groups.iter().map(|g| (g.name.clone(), g.count, 0, 0)).collect(),
                    progress_deadline_ns: 600_000_000_000,
                    create_index: index,
                    modify_index: index,
                    create_time: now,
                    modify_time: now,
                };
                ctx.world.deployments.push(d);
                let last = ctx.world.deployments.len() - 1;
                &mut ctx.world.deployments[last]
            }
        };
        for (gi, _) in &wanted {
            if let Some(g) = d.groups.get_mut(*gi) {
                g.2 += 1;
            }
        }
        d.modify_index = index;
        d.modify_time = now;
        deployment_id = d.id.clone();
        events.push(deployment_event("PlanResult", d));
    }
    events.extend(stopped);
    for (gi, slot) in wanted {
        let a = make_alloc(ctx, &job, gi, slot, &eval_id, &deployment_id);
        events.push(alloc_event("PlanResult", &a));
        ctx.world.allocs.push(a);
    }
    let mut eval = make_eval(ctx, &job, "job-register", "complete", &deployment_id);
    eval.id = eval_id;
    eval.create_index = index.saturating_sub(ctx.rng.random_range(1..4u64));
    events.push(eval_event("PlanResult", &eval));
    if job.status == "pending"
        && let Some(j) = ctx.world.job_mut(&job.id)
    {
        j.status = "running";
        j.modify_index = index;
        events.push(job_event("PlanResult", j, false));
    }
    one(index, events)
}

/// Allocations `job` lacks, as (group position, slot), at most `budget` of them.
pub(super) fn missing(world: &World, job: &Job, budget: usize) -> Vec<(usize, u32)> {
    let mut wanted = Vec::new();
    for (gi, g) in job.groups.iter().enumerate() {
        let live = world
            .allocs
            .iter()
            .filter(|a| a.job_id == job.id && a.group == g.name && a.desired_status == "run" && !a.terminal())
            .count() as u32;
        for slot in live + g.completed..g.count {
            if wanted.len() >= budget {
                return wanted;
            }
            wanted.push((gi, slot));
        }
    }
    wanted
}

/// A huge `PlanResult` (a fan-out batch job): allocation events until the payloads
/// reach `bytes`, then the evaluation. Nothing is kept in the world.
pub(crate) fn huge_plan(ctx: &mut Ctx<'_>, bytes: usize) -> Vec<Batch> {
    let mut job = make_job(ctx);
    job.id = format!("fanout-{}", short_hex(ctx.rng, 6));
    job.kind = JobKind::Batch;
    job.groups.truncate(1);
    let eval_id = uuid(ctx.rng);
    let template = make_alloc(ctx, &job, 0, 0, &eval_id, "");
    let mut events = Vec::new();
    let mut size = 0usize;
    let mut slot = 0u32;
    while size < bytes {
        let mut a = template.clone();
        a.id = uuid(ctx.rng);
        a.name = format!("{}.{}[{slot}]", job.id, a.group);
        slot += 1;
        let ev = alloc_event("PlanResult", &a);
        size += ev.payload.len();
        events.push(ev);
    }
    let mut eval = make_eval(ctx, &job, "job-register", "complete", "");
    eval.id = eval_id;
    events.push(eval_event("PlanResult", &eval));
    vec![Batch::new(ctx.index, events)]
}

/// `AllocationUpdated`: a batch of client status updates.
pub(super) fn alloc_updated(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    // Allocations in transition (pending, or told to stop) report first.
    let (hot, cold): (Vec<usize>, Vec<usize>) =
        (0..ctx.world.allocs.len()).filter(|&i| !ctx.world.allocs[i].terminal()).partition(|&i| {
            let a = &ctx.world.allocs[i];
            a.client_status == "pending" || a.desired_status == "stop"
        });
    if hot.is_empty() && cold.is_empty() {
        return None;
    }
    let n = ctx.rng.random_range(1..=(hot.len() + cold.len()).min(6));
    let from_hot = if ctx.rng.random_bool(0.8) { n.min(hot.len()) } else { 0 };
    let mut chosen: Vec<usize> = hot.choose_multiple(ctx.rng, from_hot).copied().collect();
    chosen.extend(cold.choose_multiple(ctx.rng, n - from_hot));
    if chosen.is_empty() {
        chosen.extend(hot.choose(ctx.rng));
    }
    let (index, now) = (ctx.index, ctx.now);
    let mut events = Vec::with_capacity(n + 1);
    let mut failed_jobs: Vec<String> = Vec::new();
    for &i in &chosen {
        let kind = ctx.world.job(&ctx.world.allocs[i].job_id).map_or(JobKind::Service, |j| j.kind);
        let roll: f64 = ctx.rng.random();
        let a = &mut ctx.world.allocs[i];
        match (a.client_status, a.desired_status) {
            ("pending", "stop") => finish_alloc(a, now, "complete", 0),
            ("pending", _) => start_alloc(a, now),
            (_, "stop") => {
                push_task_event(a, "Killing", now, "Sent interrupt. Waiting 5s before force killing", 0);
                finish_alloc(a, now, "complete", 0);
            }
            _ if kind == JobKind::Batch => finish_alloc(a, now, "complete", 0),
            _ if roll < 0.6 => {
                push_task_event(a, "Terminated", now, "Exit Code: 1", 1);
                push_task_event(a, "Restarting", now, "Task restarting in 16.52s", 0);
                push_task_event(a, "Started", now, "Task started by client", 0);
                a.restarts += 1;
            }
            _ if roll < 0.7 => finish_alloc(a, now, "failed", 137),
            _ => push_task_event(a, "Signaling", now, "Template re-rendered", 0),
        }
        a.modify_index = index;
        a.modify_time = now;
        events.push(alloc_event("AllocationUpdated", a));
        let (job_id, group, status) = (a.job_id.clone(), a.group.clone(), a.client_status);
        if status == "failed" && !failed_jobs.contains(&job_id) {
            failed_jobs.push(job_id);
        } else if status == "complete"
            && kind == JobKind::Batch
            && let Some(g) =
                ctx.world.job_mut(&job_id).and_then(|j| j.groups.iter_mut().find(|g| g.name == group))
        {
            g.completed += 1;
        }
    }
    // Failed allocations are rescheduled: the same apply creates an evaluation.
    for job_id in failed_jobs {
        if let Some(job) = ctx.world.job(&job_id).filter(|j| !j.stop).cloned() {
            let eval = make_eval(ctx, &job, "alloc-failure", "pending", "");
            events.push(eval_event("AllocationUpdated", &eval));
            queue_plan(ctx.world, &job.id, &eval.id);
        }
    }
    // Job status follows its allocations (setJobStatuses), in the same frame.
    let mut job_ids: Vec<String> = chosen.iter().map(|&i| ctx.world.allocs[i].job_id.clone()).collect();
    job_ids.dedup();
    ctx.world.allocs.retain(|a| !a.terminal());
    for id in job_ids {
        let has_allocs = ctx.world.allocs.iter().any(|a| a.job_id == id);
        let Some(pos) = ctx.world.jobs.iter().position(|j| j.id == id) else {
            continue;
        };
        let job = &mut ctx.world.jobs[pos];
        let status = if has_allocs { "running" } else { "dead" };
        if job.status != status {
            job.status = status;
            job.modify_index = index;
            events.push(job_event("AllocationUpdated", job, false));
        }
        if job.stop && !has_allocs {
            ctx.world.jobs.swap_remove(pos);
        }
    }
    one(index, events)
}

/// `EvaluationUpdated`: a scheduler evaluation changes status (plus the job, sometimes).
pub(super) fn eval_updated(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let job = ctx.world.jobs.choose(ctx.rng)?.clone();
    let triggers =
        ["node-update", "alloc-failure", "deployment-watcher", "queued-allocs", "alloc-stop", "job-scaling"];
    let trigger = triggers.choose(ctx.rng).copied().unwrap_or("node-update");
    let roll: f64 = ctx.rng.random();
    let status = if roll < 0.7 {
        "complete"
    } else if roll < 0.85 {
        "blocked"
    } else {
        "pending"
    };
    let mut eval = make_eval(ctx, &job, trigger, status, "");
    if trigger == "node-update" {
        eval.node_id = ctx.world.nodes.choose(ctx.rng).map(|n| n.id.clone()).unwrap_or_default();
    }
    if status == "blocked" {
        eval.failed_group = job.groups.first().map(|g| g.name.clone());
        eval.status_description = "created to place remaining allocations";
        eval.previous_eval = uuid(ctx.rng);
    }
    let mut events = vec![eval_event("EvaluationUpdated", &eval)];
    if ctx.rng.random_bool(0.2) {
        events.push(job_event("EvaluationUpdated", &job, false));
    }
    one(ctx.index, events)
}

/// `DeploymentStatusUpdate`: a running deployment succeeds or fails.
pub(super) fn deployment_status(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let running: Vec<usize> =
        (0..ctx.world.deployments.len()).filter(|&i| ctx.world.deployments[i].status == "running").collect();
    let di = *running.choose(ctx.rng)?;
    let success = ctx.rng.random_bool(0.85);
    let mut d = ctx.world.deployments.swap_remove(di);
    if success {
        d.status = "successful";
        d.description = "Deployment completed successfully";
        for g in &mut d.groups {
            g.3 = g.1;
        }
    } else {
        d.status = "failed";
        d.description = "Failed due to progress deadline";
    }
    d.modify_index = ctx.index;
    d.modify_time = ctx.now;
    let mut events = vec![deployment_event("DeploymentStatusUpdate", &d)];
    if let Some(job) = ctx.world.job(&d.job_id).cloned() {
        let eval = make_eval(ctx, &job, "deployment-watcher", "pending", &d.id);
        events.push(eval_event("DeploymentStatusUpdate", &eval));
        if success && let Some(j) = ctx.world.job_mut(&d.job_id) {
            j.stable = true;
            j.modify_index = ctx.index;
            events.push(job_event("DeploymentStatusUpdate", j, false));
        }
    }
    one(ctx.index, events)
}

/// `DeploymentAllocHealth`: allocations of a deployment report healthy.
pub(super) fn deployment_health(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let running: Vec<usize> =
        (0..ctx.world.deployments.len()).filter(|&i| ctx.world.deployments[i].status == "running").collect();
    let di = *running.choose(ctx.rng)?;
    let dep_id = ctx.world.deployments[di].id.clone();
    let ready: Vec<usize> = (0..ctx.world.allocs.len())
        .filter(|&i| {
            let a = &ctx.world.allocs[i];
            a.deployment_id == dep_id && a.healthy.is_none() && a.client_status == "running"
        })
        .collect();
    if ready.is_empty() {
        return None;
    }
    let n = ctx.rng.random_range(1..=ready.len().min(3));
    let chosen: Vec<usize> = ready.choose_multiple(ctx.rng, n).copied().collect();
    let (index, now) = (ctx.index, ctx.now);
    let mut alloc_events = Vec::new();
    for i in chosen {
        let a = &mut ctx.world.allocs[i];
        a.healthy = Some(true);
        a.health_index = index;
        a.modify_index = index;
        a.modify_time = now;
        let group = a.group.clone();
        alloc_events.push(alloc_event("DeploymentAllocHealth", a));
        if let Some(g) = ctx.world.deployments[di].groups.iter_mut().find(|g| g.0 == group) {
            g.3 = (g.3 + 1).min(g.2.max(g.3 + 1));
        }
    }
    let d = &mut ctx.world.deployments[di];
    d.modify_index = index;
    d.modify_time = now;
    let mut events = vec![deployment_event("DeploymentAllocHealth", d)];
    events.extend(alloc_events);
    one(index, events)
}

/// `AllocationUpdateDesiredStatus`: allocations are marked for migration or stop,
/// with the evaluation that will act on it.
pub(super) fn desired_status(ctx: &mut Ctx<'_>) -> Option<Vec<Batch>> {
    let running: Vec<usize> = (0..ctx.world.allocs.len())
        .filter(|&i| {
            let a = &ctx.world.allocs[i];
            a.client_status == "running" && a.desired_status == "run" && !a.migrate
        })
        .collect();
    if running.is_empty() {
        return None;
    }
    let n = ctx.rng.random_range(1..=running.len().min(3));
    let chosen: Vec<usize> = running.choose_multiple(ctx.rng, n).copied().collect();
    let (index, now) = (ctx.index, ctx.now);
    let mut events = Vec::new();
    let mut job_id = String::new();
    for i in chosen {
        let a = &mut ctx.world.allocs[i];
        a.migrate = true;
        a.alloc_modify_index = index;
        a.modify_index = index;
        a.modify_time = now;
        job_id.clone_from(&a.job_id);
        events.push(alloc_event("AllocationUpdateDesiredStatus", a));
    }
    if let Some(job) = ctx.world.job(&job_id).cloned() {
        let eval = make_eval(ctx, &job, "node-drain", "pending", "");
        events.push(eval_event("AllocationUpdateDesiredStatus", &eval));
    }
    one(index, events)
}
