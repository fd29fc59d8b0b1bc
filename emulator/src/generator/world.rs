//! The simulated cluster the generator mutates: nodes, jobs, allocations,
//! deployments and service registrations, plus deterministic ID and time helpers.

use std::collections::VecDeque;

use rand::Rng as _;
use rand::rngs::StdRng;

/// Kind of job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    Service,
    Batch,
    System,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Service => "service",
            JobKind::Batch => "batch",
            JobKind::System => "system",
        }
    }
}

/// A task group of a job.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub name: String,
    pub count: u32,
    /// Allocations that completed successfully (batch jobs do not re-place them).
    pub completed: u32,
    pub tasks: Vec<String>,
    pub port_label: &'static str,
    pub service: Option<String>,
    pub cpu: u32,
    pub memory_mb: u32,
}

/// A job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub id: String,
    pub ns: String,
    pub kind: JobKind,
    pub priority: u32,
    pub version: u64,
    pub status: &'static str,
    pub stop: bool,
    pub stable: bool,
    pub groups: Vec<Group>,
    pub image: String,
    pub pool: String,
    /// Cached JSON of the version-dependent spec (`TaskGroups` … `Meta`).
    pub spec: String,
    pub create_index: u64,
    pub modify_index: u64,
    pub job_modify_index: u64,
    pub submit_time: u64,
}

/// An allocation.
#[derive(Debug, Clone)]
pub(crate) struct Alloc {
    pub id: String,
    pub ns: String,
    pub job_id: String,
    pub job_version: u64,
    pub group: String,
    pub tasks: Vec<String>,
    pub name: String,
    pub node_id: String,
    pub node_name: String,
    pub eval_id: String,
    pub deployment_id: String,
    pub client_status: &'static str,
    pub client_description: &'static str,
    pub desired_status: &'static str,
    pub desired_description: &'static str,
    pub migrate: bool,
    pub healthy: Option<bool>,
    pub health_index: u64,
    pub events: Vec<String>,
    pub restarts: u32,
    pub started_at: u64,
    pub finished_at: u64,
    /// Cached JSON from `"Resources"` through `"Metrics"`.
    pub resources: String,
    pub ip: String,
    pub port: u32,
    pub create_index: u64,
    pub modify_index: u64,
    pub alloc_modify_index: u64,
    pub create_time: u64,
    pub modify_time: u64,
}

impl Alloc {
    /// Whether the allocation reached a terminal client status.
    pub fn terminal(&self) -> bool {
        matches!(self.client_status, "complete" | "failed" | "lost")
    }
}

/// A deployment.
#[derive(Debug, Clone)]
pub(crate) struct Deployment {
    pub id: String,
    pub ns: String,
    pub job_id: String,
    pub job_version: u64,
    pub job_modify_index: u64,
    pub job_create_index: u64,
    pub priority: u32,
    pub status: &'static str,
    pub description: &'static str,
    /// (group, desired, placed, healthy)
    pub groups: Vec<(String, u32, u32, u32)>,
    pub progress_deadline_ns: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: u64,
    pub modify_time: u64,
}

/// A node.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub id: String,
    pub name: String,
    pub dc: String,
    pub pool: String,
    pub ip: String,
    pub status: &'static str,
    pub eligibility: &'static str,
    pub drain: bool,
    /// Cached JSON of the static part (`Attributes` … `Drivers`).
    pub body: String,
    pub events: VecDeque<String>,
    pub status_updated_at: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A Nomad-native service registration.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub id: String,
    pub name: String,
    pub ns: String,
    pub node_id: String,
    pub dc: String,
    pub job_id: String,
    pub alloc_id: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u32,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A node pool.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub name: String,
    pub description: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// An evaluation (not kept: each is emitted once or twice).
#[derive(Debug, Clone)]
pub(crate) struct Eval {
    pub id: String,
    pub ns: String,
    pub priority: u32,
    pub kind: JobKind,
    pub triggered_by: &'static str,
    pub job_id: String,
    pub job_modify_index: u64,
    pub node_id: String,
    pub deployment_id: String,
    pub status: &'static str,
    pub status_description: &'static str,
    pub previous_eval: String,
    pub blocked_eval: String,
    pub queued: Vec<(String, u32)>,
    pub failed_group: Option<String>,
    /// Computed node class → eligible.
    pub class_eligibility: Vec<(u64, bool)>,
    pub snapshot_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: u64,
    pub modify_time: u64,
}

/// The whole simulated cluster.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub nodes: Vec<Node>,
    pub jobs: Vec<Job>,
    pub allocs: Vec<Alloc>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub pools: Vec<Pool>,
    /// Jobs registered but not yet planned: (job ID, eval ID).
    pub pending_plans: VecDeque<(String, String)>,
}

impl World {
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    pub fn job_mut(&mut self, id: &str) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    pub fn deployment_for(&self, job_id: &str) -> Option<usize> {
        self.deployments.iter().position(|d| d.job_id == job_id && d.status == "running")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A random UUID-looking ID (Nomad's `uuid.Generate` is 16 random bytes).
pub(crate) fn uuid(rng: &mut StdRng) -> String {
    let a: u64 = rng.random();
    let b: u64 = rng.random();
    let mut out = String::with_capacity(36);
    for (i, shift) in (0..16).rev().enumerate() {
        out.push(HEX[((a >> (shift * 4)) & 0xf) as usize] as char);
        if i == 7 || i == 11 {
            out.push('-');
        }
    }
    out.push('-');
    for (i, shift) in (0..16).rev().enumerate() {
        out.push(HEX[((b >> (shift * 4)) & 0xf) as usize] as char);
        if i == 3 {
            out.push('-');
        }
    }
    out
}

/// `n` random lowercase hex characters.
pub(crate) fn short_hex(rng: &mut StdRng, n: usize) -> String {
    (0..n).map(|_| HEX[rng.random_range(0..16usize)] as char).collect()
}

/// Unix nanoseconds as RFC 3339 with trailing zeros trimmed (Go's `RFC3339Nano`).
pub(crate) fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let (y, m, d) = crate::http::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut out = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if frac > 0 {
        let f = format!("{frac:09}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn ids_and_times() {
        let mut rng = StdRng::seed_from_u64(1);
        let id = uuid(&mut rng);
        assert_eq!(id.len(), 36);
        let dashes: Vec<usize> = id.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, vec![8, 13, 18, 23]);
        assert_eq!(rfc3339(1_136_214_245_000_000_000), "2006-01-02T15:04:05Z");
        assert_eq!(rfc3339(1_136_214_245_120_000_000), "2006-01-02T15:04:05.12Z");
    }
}
