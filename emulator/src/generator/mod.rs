//! A seeded generator of realistic Nomad activity (spec §6 and §9). Each call to
//! [`Generator::next_batches`] performs one simulated raft operation on a small
//! simulated cluster and returns the frames it commits: `Type` comes from the
//! operation, several topics share a frame, `JobRegistered`/`JobDeregistered`
//! commit a Job frame then an Evaluation frame with the same index, and indexes
//! advance by 1-5 between operations.

mod factory;
mod infra;
mod ops;
mod payload;
mod sched;
mod world;

use std::time::Duration;

use rand::SeedableRng as _;
use rand::rngs::StdRng;

use crate::Emulator;
use crate::event::Batch;
use world::World;

/// Settings of a [`Generator`].
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Events per second for [`Generator::run`]; `None` (or a non-positive value) means
    /// as fast as possible. Default 50.
    pub rate: Option<f64>,
    /// [`Generator::run`] stops once at least this many events were published;
    /// `None` runs forever. Default `None`.
    pub total_events: Option<u64>,
    /// Seed: the same seed gives the same batches. Default 0.
    pub seed: u64,
    /// Every Nth operation (call of [`Generator::next_batches`]) is a huge `PlanResult`
    /// line of about `large_line_bytes`.
    /// Default `None`.
    pub large_line_every: Option<u64>,
    /// Target size of a huge line. Default 4 MiB.
    pub large_line_bytes: usize,
    /// Namespaces jobs are spread over. Default `["default"]`.
    pub namespaces: Vec<String>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            rate: Some(50.0),
            total_events: None,
            seed: 0,
            large_line_every: None,
            large_line_bytes: 4 << 20,
            namespaces: vec!["default".to_string()],
        }
    }
}

/// Produces realistic batches; see the module documentation.
#[derive(Debug)]
pub struct Generator {
    emulator: Option<Emulator>,
    config: GeneratorConfig,
    rng: StdRng,
    world: World,
    last_index: u64,
    /// Simulated wall clock, unix nanoseconds.
    now_ns: u64,
    /// Operations performed so far.
    ops: u64,
}

/// First index of a generator's activity (its initial world uses indexes below it).
const BASE_INDEX: u64 = 100;
/// Simulated start time: 2025-10-09T08:00:00Z.
const START_NS: u64 = 1_759_996_800_000_000_000;

impl Generator {
    /// A generator not attached to any emulator: [`Generator::next_batches`] works
    /// the same (indexes start above 100); [`Generator::run`] only counts.
    pub fn new(config: GeneratorConfig) -> Generator {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let namespaces = if config.namespaces.is_empty() {
            vec!["default".to_string()]
        } else {
            config.namespaces.clone()
        };
        let world = factory::initial_world(&mut rng, &namespaces, START_NS);
        Generator {
            emulator: None,
            config: GeneratorConfig { namespaces, ..config },
            rng,
            world,
            last_index: BASE_INDEX,
            now_ns: START_NS,
            ops: 0,
        }
    }

    /// A generator publishing into `emulator`.
    pub(crate) fn attached(emulator: Emulator, config: GeneratorConfig) -> Generator {
        let mut g = Generator::new(config);
        g.emulator = Some(emulator);
        g
    }

    /// Performs one operation and returns its frames (1 or more batches; several
    /// consecutive batches may share an index). Indexes are above everything the
    /// attached emulator has published.
    pub fn next_batches(&mut self) -> Vec<Batch> {
        let floor = self.emulator.as_ref().map_or(0, Emulator::last_index).max(self.last_index);
        let index = floor + rand::Rng::random_range(&mut self.rng, 1..=5u64);
        self.last_index = index;
        self.now_ns += rand::Rng::random_range(&mut self.rng, 1_000_000..250_000_000u64);
        let huge = self.config.large_line_every.is_some_and(|n| n > 0 && (self.ops + 1).is_multiple_of(n));
        let mut ctx = ops::Ctx {
            rng: &mut self.rng,
            world: &mut self.world,
            namespaces: &self.config.namespaces,
            index,
            now: self.now_ns,
        };
        let batches = if huge {
            sched::huge_plan(&mut ctx, self.config.large_line_bytes)
        } else {
            ops::random_operation(&mut ctx)
        };
        self.ops += 1;
        batches
    }

    /// Publishes into the attached emulator at the configured rate until
    /// `total_events` is reached (forever if `None`); returns the number of events
    /// published. Pacing uses deadlines from the start time, so it does not drift;
    /// at high rates it publishes in small groups.
    pub async fn run(mut self) -> u64 {
        let rate = self.config.rate.filter(|r| r.is_finite() && *r > 0.0);
        let total = self.config.total_events;
        let start = tokio::time::Instant::now();
        let mut sent: u64 = 0;
        let mut since_yield: u64 = 0;
        while total.is_none_or(|t| sent < t) {
            if let Some(rate) = rate {
                let due = start + Duration::from_secs_f64(sent as f64 / rate);
                if due > tokio::time::Instant::now() {
                    tokio::time::sleep_until(due).await;
                    since_yield = 0;
                }
            }
            for batch in self.next_batches() {
                sent += batch.events.len() as u64;
                since_yield += batch.events.len() as u64;
                if let Some(emu) = &self.emulator {
                    emu.publish_generated(batch);
                }
            }
            if since_yield >= 256 {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
        sent
    }
}
