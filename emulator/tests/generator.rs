//! Tests of the seeded activity generator: determinism, frame structure,
//! Nomad's Key/FilterKeys/Namespace conventions, payload shapes and sizes, and
//! publishing through `run`.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nomad_emulator::{Batch, Emulator, EmulatorConfig, Generator, GeneratorConfig};
use serde_json::Value;

fn cfg(seed: u64) -> GeneratorConfig {
    GeneratorConfig { seed, namespaces: vec!["default".into(), "prod".into()], ..GeneratorConfig::default() }
}

fn ops(generator: &mut Generator, n: usize) -> Vec<Vec<Batch>> {
    (0..n).map(|_| generator.next_batches()).collect()
}

#[test]
fn same_seed_same_batches() {
    let lines = |seed| -> Vec<String> {
        let mut g = Generator::new(cfg(seed));
        ops(&mut g, 400).iter().flatten().map(Batch::to_line).collect()
    };
    let a = lines(42);
    assert_eq!(a, lines(42));
    assert_ne!(a, lines(43));
}

#[test]
fn frames_follow_nomad_conventions() {
    let mut g = Generator::new(cfg(7));
    let all = ops(&mut g, 3000);
    let mut last = 100;
    let mut types: HashSet<String> = HashSet::new();
    let mut sizes: HashMap<String, Vec<usize>> = HashMap::new();
    let mut job_registered = 0;
    let mut multi_alloc_plans = 0;
    for op in &all {
        assert!(!op.is_empty());
        let index = op[0].index;
        assert!(op.iter().all(|b| b.index == index), "one index per operation");
        assert!((last + 1..=last + 5).contains(&index), "{last} -> {index}");
        last = index;
        if op[0].events[0].event_type == "JobRegistered" || op[0].events[0].event_type == "JobDeregistered" {
            assert_eq!(op.len(), 2);
            assert_eq!(op[0].events.len(), 1);
            assert_eq!(op[0].events[0].topic, "Job");
            assert_eq!(op[1].events[0].topic, "Evaluation");
            assert_eq!(op[1].events[0].event_type, op[0].events[0].event_type);
            job_registered += usize::from(op[0].events[0].event_type == "JobRegistered");
        } else {
            assert_eq!(op.len(), 1);
        }
        for batch in op {
            assert!(!batch.events.is_empty());
            let frame: Value = serde_json::from_str(&batch.to_line()).unwrap();
            assert_eq!(frame["Index"], index);
            let ty = &batch.events[0].event_type;
            if ty == "PlanResult" && batch.events.iter().filter(|e| e.topic == "Allocation").count() > 1 {
                multi_alloc_plans += 1;
            }
            for (ev, json) in batch.events.iter().zip(frame["Events"].as_array().unwrap()) {
                assert_eq!(&ev.event_type, ty, "Type comes from the operation");
                assert_eq!(json["Index"], index);
                types.insert(ev.event_type.clone());
                // Every generated topic wraps its object under its own name.
                let wrapper = ev.topic.as_str();
                let obj = &json["Payload"][wrapper];
                assert!(obj.is_object(), "{} payload wraps {wrapper}", ev.topic);
                let fk = &json["FilterKeys"];
                match ev.topic.as_str() {
                    "Allocation" | "Evaluation" => {
                        assert_eq!(fk[0], obj["JobID"]);
                        assert_eq!(fk[1], obj["DeploymentID"]);
                        assert_eq!(fk.as_array().unwrap().len(), 2);
                    }
                    "Deployment" => assert_eq!(fk, &serde_json::json!([obj["JobID"]])),
                    "Service" => assert_eq!(fk, &serde_json::json!([obj["JobID"], obj["ServiceName"]])),
                    _ => assert!(fk.is_null()),
                }
                match ev.topic.as_str() {
                    "Node" | "NodePool" => assert_eq!(ev.namespace, ""),
                    _ => assert_eq!(json["Namespace"], obj["Namespace"]),
                }
                let id_field = match ev.topic.as_str() {
                    "Job" | "Allocation" | "Evaluation" | "Deployment" | "Node" | "Service" => "ID",
                    _ => "Name",
                };
                assert_eq!(json["Key"], obj[id_field]);
                if ev.topic == "Allocation" {
                    assert!(obj["Job"].is_null());
                }
                sizes.entry(ev.topic.clone()).or_default().push(ev.payload.len());
            }
        }
    }
    assert!(job_registered > 50);
    assert!(multi_alloc_plans > 10);
    for ty in [
        "PlanResult",
        "AllocationUpdated",
        "JobRegistered",
        "JobDeregistered",
        "EvaluationUpdated",
        "NodeStreamEvent",
        "ServiceRegistration",
        "ServiceDeregistration",
        "DeploymentStatusUpdate",
        "DeploymentAllocHealth",
        "NodePoolUpserted",
        "AllocationUpdateDesiredStatus",
    ] {
        assert!(types.contains(ty), "{ty} never generated");
    }
    let avg = |t: &str| {
        let v = &sizes[t];
        v.iter().sum::<usize>() / v.len()
    };
    let within = |t: &str, lo: usize, hi: usize| {
        let a = avg(t);
        assert!((lo..=hi).contains(&a), "{t}: average payload {a} B not in {lo}..={hi}");
    };
    within("Allocation", 2_500, 10_000);
    within("Job", 4_000, 10_000);
    within("Node", 5_000, 20_000);
    within("Evaluation", 800, 2_000);
    within("Deployment", 600, 1_500);
    within("Service", 300, 700);
}

#[test]
fn huge_lines_on_schedule() {
    let mut g =
        Generator::new(GeneratorConfig { large_line_every: Some(3), large_line_bytes: 1 << 20, ..cfg(1) });
    for i in 1..=9 {
        let op = g.next_batches();
        let line = op[0].to_line();
        if i % 3 == 0 {
            assert!(line.len() >= 1 << 20, "op {i}: {} bytes", line.len());
            assert_eq!(op[0].events[0].event_type, "PlanResult");
            let _: Value = serde_json::from_str(&line).unwrap();
        } else {
            assert!(line.len() < 1 << 20);
        }
    }
}

#[tokio::test]
async fn attached_generator_starts_above_last_index_and_run_publishes() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.publish(Batch::new(5_000, Vec::new()));
    let mut g = emu.generator(GeneratorConfig { rate: None, total_events: Some(500), ..cfg(9) });
    assert!(g.next_batches()[0].index > 5_000);
    let n = g.run().await;
    assert!(n >= 500);
    let published = emu.published();
    assert_eq!(published.iter().map(|b| b.events.len() as u64).sum::<u64>(), n);
    assert!(published.windows(2).all(|w| w[0].index <= w[1].index));
    assert_eq!(emu.last_index(), published.last().unwrap().index);
}

#[tokio::test]
async fn run_is_paced() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let g = emu.generator(GeneratorConfig { rate: Some(2_000.0), total_events: Some(400), ..cfg(2) });
    let start = Instant::now();
    let n = g.run().await;
    let elapsed = start.elapsed();
    // 400 events at 2000/s: about 0.2 s (the last group is published when due).
    assert!(n >= 400);
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}
