//! JSON text of the payload objects (`{"Allocation":{...}}`, `{"Job":{...}}`, ...),
//! built by string concatenation with the fields Nomad's structs have (spec §9).
//! The large, rarely changing parts (job spec, allocation resources, node
//! attributes) are rendered once and cached on the entity.

use std::fmt::Write as _;

use rand::Rng as _;
use rand::rngs::StdRng;

use super::world::{Alloc, Deployment, Eval, Group, Job, Node, Pool, Service, rfc3339, short_hex};

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `"Resources"` … `"Metrics"` of an allocation (cached per allocation).
pub(crate) fn alloc_resources(
    rng: &mut StdRng,
    group: &Group,
    ip: &str,
    port: u32,
    node_ids: &[String],
) -> String {
    let mut s = String::with_capacity(2600 + 700 * group.tasks.len());
    let network = format!(
        r#"[{{"Mode":"host","Device":"","CIDR":"","IP":"{ip}","Hostname":"","MBits":0,"DNS":null,"ReservedPorts":null,"DynamicPorts":[{{"Label":"{label}","Value":{port},"To":8080,"HostNetwork":"default","IgnoreCollision":false}}]}}]"#,
        label = group.port_label
    );
    let res = |s: &mut String, cpu: u32, mem: u32, disk: u32, nets: &str| {
        let _ = write!(
            s,
            r#"{{"CPU":{cpu},"Cores":0,"MemoryMB":{mem},"MemoryMaxMB":0,"DiskMB":{disk},"IOPS":0,"Networks":{nets},"Devices":null,"NUMA":null,"SecretsMB":0}}"#
        );
    };
    s.push_str("\"Resources\":");
    res(&mut s, group.cpu, group.memory_mb, 300, &network);
    s.push_str(",\"SharedResources\":");
    res(&mut s, 0, 0, 300, &network);
    s.push_str(",\"TaskResources\":{");
    for (i, t) in group.tasks.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{t}\":");
        res(&mut s, group.cpu, group.memory_mb, 0, "null");
    }
    s.push_str("},\"AllocatedResources\":{\"Tasks\":{");
    for (i, t) in group.tasks.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            r#""{t}":{{"Cpu":{{"CpuShares":{},"ReservedCores":null,"TotalMhz":0}},"Memory":{{"MemoryMB":{},"MemoryMaxMB":0}},"Networks":null,"Devices":null}}"#,
            group.cpu, group.memory_mb
        );
    }
    s.push_str("},\"TaskLifecycles\":{");
    for (i, t) in group.tasks.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{t}\":null");
    }
    let _ = write!(
        s,
        r#"}},"Shared":{{"Networks":{network},"DiskMB":300,"Ports":[{{"Label":"{}","Value":{port},"To":8080,"HostIP":"{ip}"}}]}}}}"#,
        group.port_label
    );
    let evaluated = node_ids.len();
    let _ = write!(
        s,
        r#","Metrics":{{"NodesEvaluated":{evaluated},"NodesFiltered":0,"NodesInPool":{evaluated},"NodesAvailable":{{"dc1":{evaluated}}},"ClassFiltered":null,"ConstraintFiltered":null,"NodesExhausted":0,"ClassExhausted":null,"DimensionExhausted":null,"QuotaExhausted":null,"ResourcesExhausted":null,"Scores":null,"ScoreMetaData":["#
    );
    for (i, id) in node_ids.iter().take(3).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let bin: f64 = rng.random_range(0.1..0.95);
        let _ = write!(
            s,
            r#"{{"NodeID":"{id}","Scores":{{"binpack":{bin:.6},"job-anti-affinity":0,"node-reschedule-penalty":0,"node-affinity":0}},"NormScore":{bin:.6}}}"#
        );
    }
    let _ =
        write!(s, r#"],"AllocationTime":{},"CoalescedFailures":0}}"#, rng.random_range(20_000..900_000u32));
    s
}

/// One `TaskEvent`.
pub(crate) fn task_event(kind: &str, time_ns: u64, display: &str, exit_code: i32) -> String {
    let mut s = String::with_capacity(420);
    let _ = write!(
        s,
        r#"{{"Type":"{kind}","Time":{time_ns},"Message":"","DisplayMessage":"{display}","Details":{{}},"FailsTask":false,"RestartReason":"","SetupError":"","DriverError":"","ExitCode":{exit_code},"Signal":0,"KillTimeout":0,"KillError":"","KillReason":"","StartDelay":0,"DownloadError":"","ValidationError":"","DiskLimit":0,"FailedSibling":"","VaultError":"","TaskSignalReason":"","TaskSignal":"","DriverMessage":"","GenericSource":""}}"#
    );
    s
}

/// `{"Allocation":{...}}` with `Job:null`.
pub(crate) fn allocation(a: &Alloc) -> String {
    let events_len: usize = a.events.iter().map(|e| e.len() + 1).sum();
    let mut s = String::with_capacity(a.resources.len() + 1400 + a.tasks.len() * (events_len + 300));
    let _ = write!(
        s,
        r#"{{"Allocation":{{"ID":"{}","Namespace":"{}","EvalID":"{}","Name":"{}","NodeID":"{}","NodeName":"{}","JobID":"{}","Job":null,"TaskGroup":"{}","#,
        a.id, a.ns, a.eval_id, a.name, a.node_id, a.node_name, a.job_id, a.group
    );
    s.push_str(&a.resources);
    let bool_or_null = |b: bool| if b { "true" } else { "null" };
    let _ = write!(
        s,
        r#","DesiredStatus":"{}","DesiredDescription":"{}","DesiredTransition":{{"Migrate":{},"Reschedule":null,"ForceReschedule":null,"NoShutdownDelay":null}},"ClientStatus":"{}","ClientDescription":"{}","TaskStates":"#,
        a.desired_status,
        a.desired_description,
        bool_or_null(a.migrate),
        a.client_status,
        a.client_description
    );
    if a.events.is_empty() {
        s.push_str("null");
    } else {
        s.push('{');
        let state = match a.client_status {
            "pending" => "pending",
            "running" => "running",
            _ => "dead",
        };
        let started = if a.started_at > 0 { rfc3339(a.started_at) } else { ZERO_TIME.to_string() };
        let finished = if a.finished_at > 0 { rfc3339(a.finished_at) } else { ZERO_TIME.to_string() };
        for (i, t) in a.tasks.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                r#""{t}":{{"State":"{state}","Failed":{},"Restarts":{},"LastRestart":"{}","StartedAt":"{started}","FinishedAt":"{finished}","Events":["#,
                a.client_status == "failed",
                a.restarts,
                ZERO_TIME
            );
            for (j, e) in a.events.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                s.push_str(e);
            }
            s.push_str("],\"TaskHandle\":null}");
        }
        s.push('}');
    }
    s.push_str(r#","AllocStates":null,"PreviousAllocation":"","NextAllocation":"","DeploymentID":""#);
    s.push_str(&a.deployment_id);
    s.push_str("\",\"DeploymentStatus\":");
    match a.healthy {
        None => s.push_str("null"),
        Some(h) => {
            let _ = write!(
                s,
                r#"{{"Healthy":{h},"Timestamp":"{}","Canary":false,"ModifyIndex":{}}}"#,
                rfc3339(a.modify_time),
                a.health_index
            );
        }
    }
    let _ = write!(
        s,
        r#","RescheduleTracker":null,"NetworkStatus":{{"InterfaceName":"","Address":"","AddressIPv6":"","DNS":null}},"FollowupEvalID":"","PreemptedAllocations":null,"PreemptedByAllocation":"","SigningKeyID":"","CreateIndex":{},"ModifyIndex":{},"AllocModifyIndex":{},"CreateTime":{},"ModifyTime":{}}}}}"#,
        a.create_index, a.modify_index, a.alloc_modify_index, a.create_time, a.modify_time
    );
    s
}

const TEMPLATE_LINES: &[&str] = &[
    "[server]",
    "listen = \\\"0.0.0.0:{{ env \\\"NOMAD_PORT_http\\\" }}\\\"",
    "{{ range nomadService \\\"postgres\\\" }}database_url = \\\"postgres://app@{{ .Address }}:{{ .Port }}/app\\\"{{ end }}",
    "{{ with nomadVar \\\"nomad/jobs/app\\\" }}api_key = \\\"{{ .api_key }}\\\"{{ end }}",
    "log_level = \\\"info\\\"",
    "max_connections = 512",
    "read_timeout = \\\"30s\\\"",
    "[cache]",
    "{{ range nomadService \\\"redis\\\" }}redis = \\\"{{ .Address }}:{{ .Port }}\\\"{{ end }}",
    "ttl = \\\"5m\\\"",
];

/// The version-dependent part of a job (`"TaskGroups"` … `"Meta"`), cached per version.
pub(crate) fn job_spec(rng: &mut StdRng, job: &Job) -> String {
    let mut s = String::with_capacity(6000);
    s.push_str("\"TaskGroups\":[");
    for (gi, g) in job.groups.iter().enumerate() {
        if gi > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            r#"{{"Name":"{}","Count":{},"Update":{{"Stagger":30000000000,"MaxParallel":1,"HealthCheck":"checks","MinHealthyTime":10000000000,"HealthyDeadline":300000000000,"ProgressDeadline":600000000000,"AutoRevert":false,"AutoPromote":false,"Canary":0}},"Migrate":{{"MaxParallel":1,"HealthCheck":"checks","MinHealthyTime":10000000000,"HealthyDeadline":300000000000}},"Constraints":[{{"LTarget":"${{attr.kernel.name}}","RTarget":"linux","Operand":"="}}],"Scaling":null,"RestartPolicy":{{"Attempts":2,"Interval":1800000000000,"Delay":15000000000,"Mode":"fail","RenderTemplates":false}},"Disconnect":null,"Tasks":["#,
            g.name, g.count
        );
        for (ti, t) in g.tasks.iter().enumerate() {
            if ti > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                r#"{{"Name":"{t}","Driver":"docker","User":"","Config":{{"image":"{}","ports":["{}"],"args":["--config","local/app.conf","--port","${{NOMAD_PORT_{}}}"]}},"Env":{{"APP_ENV":"production","OTEL_EXPORTER_OTLP_ENDPOINT":"http://otel-collector.service.consul:4317","GOMAXPROCS":"2"}},"Services":null,"Vault":null,"Consul":null,"Templates":[{{"SourcePath":"","DestPath":"local/app.conf","EmbeddedTmpl":""#,
                job.image, g.port_label, g.port_label
            );
            let lines = rng.random_range(4..=TEMPLATE_LINES.len());
            for l in &TEMPLATE_LINES[..lines] {
                s.push_str(l);
                s.push_str("\\n");
            }
            let _ = write!(
                s,
                r#"","ChangeMode":"restart","ChangeSignal":"","ChangeScript":null,"Splay":5000000000,"Perms":"0644","Uid":null,"Gid":null,"LeftDelim":"{{{{","RightDelim":"}}}}","Envvars":false,"VaultGrace":0,"Wait":null,"ErrMissingKey":false}}],"Constraints":null,"Affinities":null,"Resources":{{"CPU":{},"Cores":0,"MemoryMB":{},"MemoryMaxMB":0,"DiskMB":0,"IOPS":0,"Networks":null,"Devices":null,"NUMA":null,"SecretsMB":0}},"RestartPolicy":{{"Attempts":2,"Interval":1800000000000,"Delay":15000000000,"Mode":"fail","RenderTemplates":false}},"DispatchPayload":null,"Lifecycle":null,"Meta":null,"KillTimeout":5000000000,"LogConfig":{{"MaxFiles":10,"MaxFileSizeMB":10,"Disabled":false}},"Artifacts":null,"Leader":false,"ShutdownDelay":0,"VolumeMounts":null,"ScalingPolicies":null,"KillSignal":"","Kind":"","CSIPluginConfig":null,"Identity":{{"Name":"default","Audience":["nomadproject.io"],"ChangeMode":"","ChangeSignal":"","Env":false,"File":false,"Filepath":"","ServiceName":"","TTL":0}},"Identities":null,"Actions":null,"Schedule":null}}"#,
                g.cpu, g.memory_mb
            );
        }
        let _ = write!(
            s,
            r#"],"EphemeralDisk":{{"Sticky":false,"SizeMB":300,"Migrate":false}},"Meta":null,"ReschedulePolicy":{{"Attempts":0,"Interval":0,"Delay":30000000000,"DelayFunction":"exponential","MaxDelay":3600000000000,"Unlimited":true}},"Affinities":null,"Spreads":null,"Networks":[{{"Mode":"host","Device":"","CIDR":"","IP":"","Hostname":"","MBits":0,"DNS":null,"ReservedPorts":null,"DynamicPorts":[{{"Label":"{}","Value":0,"To":8080,"HostNetwork":"default","IgnoreCollision":false}}]}}],"Consul":{{"Namespace":"","Cluster":"default","Partition":""}},"Services":"#,
            g.port_label
        );
        match &g.service {
            None => s.push_str("null"),
            Some(name) => {
                let _ = write!(
                    s,
                    r#"[{{"Name":"{name}","TaskName":"","PortLabel":"{}","AddressMode":"auto","Address":"","EnableTagOverride":false,"Tags":["traefik.enable=true","version={}"],"CanaryTags":null,"Checks":[{{"Name":"service: \"{name}\" check","Type":"http","Command":"","Args":null,"Path":"/health","Protocol":"","PortLabel":"","Expose":false,"AddressMode":"","Interval":10000000000,"Timeout":2000000000,"InitialStatus":"","TLSServerName":"","TLSSkipVerify":false,"Method":"","Header":null,"CheckRestart":null,"GRPCService":"","GRPCUseTLS":false,"TaskName":"","SuccessBeforePassing":0,"FailuresBeforeCritical":0,"FailuresBeforeWarning":0,"Body":"","OnUpdate":"require_healthy"}}],"Connect":null,"Meta":null,"CanaryMeta":null,"TaggedAddresses":null,"Namespace":"default","OnUpdate":"require_healthy","Provider":"nomad","Cluster":"default","Identity":null,"Weights":null,"Kind":""}}]"#,
                    g.port_label, job.version
                );
            }
        }
        s.push_str(r#","Volumes":null,"ShutdownDelay":null,"StopAfterClientDisconnect":null,"MaxClientDisconnect":null,"PreventRescheduleOnLost":false}"#);
    }
    let _ = write!(
        s,
        r#"],"Update":{{"Stagger":30000000000,"MaxParallel":1,"HealthCheck":"","MinHealthyTime":0,"HealthyDeadline":0,"ProgressDeadline":0,"AutoRevert":false,"AutoPromote":false,"Canary":0}},"Multiregion":null,"Periodic":null,"ParameterizedJob":null,"Dispatched":false,"DispatchIdempotencyToken":"","Payload":null,"Meta":{{"owner":"team-{}","git_sha":"{}"}}"#,
        short_hex(rng, 4),
        short_hex(rng, 12)
    );
    s
}

/// `{"Job":{...}}`, with `"Deleted":true` after it when the job was purged.
pub(crate) fn job(j: &Job, deleted: bool) -> String {
    let mut s = String::with_capacity(j.spec.len() + 900);
    let _ = write!(
        s,
        r#"{{"Job":{{"Stop":{},"Region":"global","Namespace":"{}","ID":"{}","ParentID":"","Name":"{}","Type":"{}","Priority":{},"AllAtOnce":false,"Datacenters":["dc1"],"NodePool":"{}","Constraints":null,"Affinities":null,"Spreads":null,"#,
        j.stop,
        j.ns,
        j.id,
        j.id,
        j.kind.as_str(),
        j.priority,
        j.pool
    );
    s.push_str(&j.spec);
    let _ = write!(
        s,
        r#","ConsulToken":"","ConsulNamespace":"","VaultToken":"","VaultNamespace":"","NomadTokenID":"","Status":"{}","StatusDescription":"","Stable":{},"Version":{},"SubmitTime":{},"CreateIndex":{},"ModifyIndex":{},"JobModifyIndex":{},"UI":null,"VersionTag":null}}"#,
        j.status, j.stable, j.version, j.submit_time, j.create_index, j.modify_index, j.job_modify_index
    );
    if deleted {
        s.push_str(",\"Deleted\":true");
    }
    s.push('}');
    s
}

/// `{"Evaluation":{...}}`.
pub(crate) fn evaluation(e: &Eval) -> String {
    let mut s = String::with_capacity(1400);
    let _ = write!(
        s,
        r#"{{"Evaluation":{{"ID":"{}","Namespace":"{}","Priority":{},"Type":"{}","TriggeredBy":"{}","JobID":"{}","JobModifyIndex":{},"NodeID":"{}","NodeModifyIndex":0,"DeploymentID":"{}","Status":"{}","StatusDescription":"{}","Wait":0,"WaitUntil":"{ZERO_TIME}","NextEval":"","PreviousEval":"{}","BlockedEval":"{}","RelatedEvals":null,"FailedTGAllocs":"#,
        e.id,
        e.ns,
        e.priority,
        e.kind.as_str(),
        e.triggered_by,
        e.job_id,
        e.job_modify_index,
        e.node_id,
        e.deployment_id,
        e.status,
        e.status_description,
        e.previous_eval,
        e.blocked_eval
    );
    match &e.failed_group {
        None => s.push_str("null"),
        Some(g) => {
            let _ = write!(
                s,
                r#"{{"{g}":{{"NodesEvaluated":6,"NodesFiltered":0,"NodesInPool":6,"NodesAvailable":{{"dc1":6}},"ClassFiltered":null,"ConstraintFiltered":null,"NodesExhausted":6,"ClassExhausted":null,"DimensionExhausted":{{"memory":6}},"QuotaExhausted":null,"ResourcesExhausted":{{"server":{{"CPU":0,"Cores":0,"MemoryMB":512,"MemoryMaxMB":0,"DiskMB":0,"IOPS":0,"Networks":null,"Devices":null,"NUMA":null,"SecretsMB":0}}}},"Scores":null,"ScoreMetaData":null,"AllocationTime":51234,"CoalescedFailures":2}}}}"#
            );
        }
    }
    s.push_str(r#","ClassEligibility":"#);
    if e.class_eligibility.is_empty() {
        s.push_str("null");
    } else {
        s.push('{');
        for (i, (class, ok)) in e.class_eligibility.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"v1:{class}\":{ok}");
        }
        s.push('}');
    }
    s.push_str(
        r#","QuotaLimitReached":"","EscapedComputedClass":false,"AnnotatePlan":false,"QueuedAllocations":{"#,
    );
    for (i, (g, n)) in e.queued.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{g}\":{n}");
    }
    let _ = write!(
        s,
        r#"}},"LeaderACL":"","SnapshotIndex":{},"PlanAnnotations":null,"CreateIndex":{},"ModifyIndex":{},"CreateTime":{},"ModifyTime":{}}}}}"#,
        e.snapshot_index, e.create_index, e.modify_index, e.create_time, e.modify_time
    );
    s
}

/// `{"Deployment":{...}}`.
pub(crate) fn deployment(d: &Deployment) -> String {
    let mut s = String::with_capacity(800 + 330 * d.groups.len());
    let _ = write!(
        s,
        r#"{{"Deployment":{{"ID":"{}","Namespace":"{}","JobID":"{}","JobVersion":{},"JobModifyIndex":{},"JobSpecModifyIndex":{},"JobCreateIndex":{},"IsMultiregion":false,"TaskGroups":{{"#,
        d.id, d.ns, d.job_id, d.job_version, d.job_modify_index, d.job_modify_index, d.job_create_index
    );
    let by = rfc3339(d.create_time + d.progress_deadline_ns);
    for (i, (g, desired, placed, healthy)) in d.groups.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            r#""{g}":{{"AutoRevert":false,"AutoPromote":false,"ProgressDeadline":{},"RequireProgressBy":"{by}","Promoted":false,"PlacedCanaries":null,"DesiredCanaries":0,"DesiredTotal":{desired},"PlacedAllocs":{placed},"HealthyAllocs":{healthy},"UnhealthyAllocs":0}}"#,
            d.progress_deadline_ns
        );
    }
    let _ = write!(
        s,
        r#"}},"Status":"{}","StatusDescription":"{}","EvalPriority":{},"CreateIndex":{},"ModifyIndex":{},"CreateTime":{},"ModifyTime":{}}}}}"#,
        d.status, d.description, d.priority, d.create_index, d.modify_index, d.create_time, d.modify_time
    );
    s
}

const DRIVERS: &[&str] = &["docker", "exec", "raw_exec", "java", "qemu"];

/// The static part of a node (`"Attributes"` … `"Drivers"`), cached per node.
pub(crate) fn node_body(rng: &mut StdRng, name: &str, ip: &str, cores: u32) -> String {
    let mut s = String::with_capacity(4000 + 120 * cores as usize);
    let mhz = rng.random_range(20..=38u32) * 100;
    let mem_mb = cores * 4096;
    let _ = write!(
        s,
        r#""Attributes":{{"arch":"x86_64","consul.connect":"true","consul.datacenter":"dc1","consul.dns.addr":"{ip}","consul.dns.port":"8600","consul.ft.namespaces":"false","consul.grpc":"8502","consul.revision":"{}","consul.server":"false","consul.sku":"oss","consul.version":"1.20.1","cpu.arch":"amd64","cpu.frequency":"{mhz}","cpu.frequency.performance":"{mhz}","cpu.modelname":"Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz","cpu.numcores":"{cores}","cpu.reservablecores":"{cores}","cpu.totalcompute":"{}","cpu.usablecompute":"{}","driver.docker":"1","driver.docker.bridge_ip":"172.17.0.1","driver.docker.os_type":"linux","driver.docker.privileged.enabled":"false","driver.docker.runtimes":"io.containerd.runc.v2,runc","driver.docker.version":"27.3.1","driver.docker.volumes.enabled":"true","driver.exec":"1","driver.java":"1","driver.java.runtime":"OpenJDK Runtime Environment (build 21.0.5+11)","driver.java.version":"21.0.5","driver.java.vm":"OpenJDK 64-Bit Server VM","driver.raw_exec":"1","kernel.arch":"x86_64","kernel.landlock":"v4","kernel.name":"linux","kernel.version":"6.8.0-1019-aws","memory.totalbytes":"{}","nomad.advertise.address":"{ip}:4646","nomad.bridge.hairpin_mode":"false","nomad.revision":"{}","nomad.service_discovery":"true","nomad.version":"2.0.6","numa.node.count":"1","numa.node0.cores":"0-{}","os.cgroups.version":"2","os.name":"ubuntu","os.signals":"SIGABRT,SIGBUS,SIGCHLD,SIGCONT,SIGFPE,SIGHUP,SIGILL,SIGINT,SIGIO,SIGIOT,SIGKILL,SIGPIPE,SIGPROF,SIGQUIT,SIGSEGV,SIGSTOP,SIGSYS,SIGTERM,SIGTRAP,SIGTSTP,SIGTTIN,SIGTTOU,SIGURG,SIGUSR1,SIGUSR2,SIGWINCH,SIGXCPU,SIGXFSZ","os.version":"24.04","platform.aws.ami-id":"ami-0{}","platform.aws.instance-type":"m6i.{}xlarge","platform.aws.placement.availability-zone":"us-east-1{}","unique.consul.name":"{name}","unique.hostname":"{name}","unique.network.ip-address":"{ip}","unique.platform.aws.hostname":"{name}.ec2.internal","unique.platform.aws.instance-id":"i-0{}","unique.platform.aws.local-hostname":"{name}.ec2.internal","unique.platform.aws.local-ipv4":"{ip}","unique.storage.bytesfree":"{}","unique.storage.bytestotal":"107374182400","unique.storage.volume":"/dev/nvme0n1p1","vault.accessible":"true","vault.cluster_id":"{}","vault.version":"1.18.2"}}"#,
        short_hex(rng, 40),
        mhz * cores,
        mhz * cores,
        u64::from(mem_mb) * 1024 * 1024,
        short_hex(rng, 40),
        cores - 1,
        short_hex(rng, 16),
        (cores / 4).max(1),
        ["a", "b", "c", "d"][rng.random_range(0..4usize)],
        short_hex(rng, 16),
        rng.random_range(20_000_000_000u64..90_000_000_000),
        short_hex(rng, 32)
    );
    let _ = write!(
        s,
        r#","NodeResources":{{"Cpu":{{"CpuShares":{},"TotalCpuCores":{cores},"ReservableCpuCores":["#,
        mhz * cores
    );
    for c in 0..cores {
        if c > 0 {
            s.push(',');
        }
        let _ = write!(s, "{c}");
    }
    let _ = write!(
        s,
        r#"]}},"Memory":{{"MemoryMB":{mem_mb}}},"Disk":{{"DiskMB":92160}},"Networks":[{{"Mode":"host","Device":"ens5","CIDR":"{ip}/32","IP":"{ip}","Hostname":"","MBits":10000,"DNS":null,"ReservedPorts":null,"DynamicPorts":null}}],"NodeNetworks":[{{"Mode":"host","Device":"ens5","MacAddress":"0a:{}:{}:{}:{}:{}","Speed":10000,"Addresses":[{{"Family":"ipv4","Alias":"default","Address":"{ip}","ReservedPorts":"","Gateway":""}}]}}],"Devices":null,"Processors":{{"Topology":{{"Distances":[[10]],"Cores":["#,
        short_hex(rng, 2),
        short_hex(rng, 2),
        short_hex(rng, 2),
        short_hex(rng, 2),
        short_hex(rng, 2)
    );
    for c in 0..cores {
        if c > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            r#"{{"SocketID":0,"NodeID":0,"ID":{c},"Grade":true,"Disable":false,"BaseSpeed":{mhz},"MaxSpeed":{},"GuessSpeed":0}}"#,
            mhz + 500
        );
    }
    let _ = write!(
        s,
        r#"]}}}},"MinDynamicPort":20000,"MaxDynamicPort":32000}},"ReservedResources":{{"Cpu":{{"CpuShares":0,"ReservedCpuCores":null}},"Memory":{{"MemoryMB":512}},"Disk":{{"DiskMB":0}},"Networks":{{"ReservedHostPorts":"22"}}}},"Resources":{{"CPU":{},"Cores":0,"MemoryMB":{mem_mb},"MemoryMaxMB":0,"DiskMB":92160,"IOPS":0,"Networks":null,"Devices":null,"NUMA":null,"SecretsMB":0}},"Reserved":{{"CPU":0,"Cores":0,"MemoryMB":512,"MemoryMaxMB":0,"DiskMB":0,"IOPS":0,"Networks":null,"Devices":null,"NUMA":null,"SecretsMB":0}},"Links":{{"consul":"dc1.{name}","aws.ec2":"us-east-1a.i-0{}"}},"Meta":{{"connect.gateway_image":"docker.io/envoyproxy/envoy:v${{NOMAD_envoy_version}}","connect.log_level":"info","connect.proxy_concurrency":"1","connect.sidecar_image":"docker.io/envoyproxy/envoy:v${{NOMAD_envoy_version}}","rack":"r{}"}},"NodeClass":"","ComputedClass":"v1:{}","CgroupParent":"nomad.slice","HostVolumes":null,"HostNetworks":null,"CSIControllerPlugins":null,"CSINodePlugins":null,"Drivers":{{"#,
        mhz * cores,
        short_hex(rng, 16),
        rng.random_range(1..40u32),
        rng.random_range(1_000_000_000_000_000_000u64..9_000_000_000_000_000_000)
    );
    for (i, d) in DRIVERS.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let detected = *d != "qemu";
        let _ = write!(
            s,
            r#""{d}":{{"Attributes":{},"Detected":{detected},"Healthy":{detected},"HealthDescription":"{}","UpdateTime":"2025-10-09T08:00:00.{:09}Z"}}"#,
            if detected { format!("{{\"driver.{d}\":\"true\"}}") } else { "null".to_string() },
            if detected { "Healthy" } else { "Driver not detected" },
            rng.random_range(1..999_999_999u32)
        );
    }
    s.push('}');
    s
}

/// One `NodeEvent`.
pub(crate) fn node_event(message: &str, subsystem: &str, details: &str, ts_ns: u64, index: u64) -> String {
    format!(
        r#"{{"Message":"{message}","Subsystem":"{subsystem}","Details":{details},"Timestamp":"{}","CreateIndex":{index}}}"#,
        rfc3339(ts_ns)
    )
}

/// `{"Node":{...}}` with `SecretID:""` and the legacy `Drain` flag.
pub(crate) fn node(n: &Node) -> String {
    let events_len: usize = n.events.iter().map(|e| e.len() + 1).sum();
    let mut s = String::with_capacity(n.body.len() + events_len + 900);
    let _ = write!(
        s,
        r#"{{"Node":{{"ID":"{}","SecretID":"","Datacenter":"{}","Name":"{}","HTTPAddr":"{}:4646","TLSEnabled":true,"#,
        n.id, n.dc, n.name, n.ip
    );
    s.push_str(&n.body);
    let drain_strategy = if n.drain {
        r#"{"DrainSpec":{"Deadline":3600000000000,"IgnoreSystemJobs":false},"ForceDeadline":"2025-10-09T10:00:00Z","StartedAt":"2025-10-09T09:00:00Z"}"#
    } else {
        "null"
    };
    let _ = write!(
        s,
        r#","NodePool":"{}","Drain":{},"DrainStrategy":{drain_strategy},"SchedulingEligibility":"{}","Status":"{}","StatusDescription":"","StatusUpdatedAt":{},"Events":["#,
        n.pool, n.drain, n.eligibility, n.status, n.status_updated_at
    );
    for (i, e) in n.events.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(e);
    }
    let _ = write!(
        s,
        r#"],"LastDrain":null,"NodeMaxAllocs":0,"IdentitySigningKeyID":"","CreateIndex":{},"ModifyIndex":{}}}}}"#,
        n.create_index, n.modify_index
    );
    s
}

/// `{"Service":{...}}`.
pub(crate) fn service(v: &Service) -> String {
    let mut s = String::with_capacity(600);
    let _ = write!(
        s,
        r#"{{"Service":{{"ID":"{}","ServiceName":"{}","Namespace":"{}","NodeID":"{}","Datacenter":"{}","JobID":"{}","AllocID":"{}","Tags":["#,
        v.id, v.name, v.ns, v.node_id, v.dc, v.job_id, v.alloc_id
    );
    for (i, t) in v.tags.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{t}\"");
    }
    let _ = write!(
        s,
        r#"],"Address":"{}","Port":{},"CreateIndex":{},"ModifyIndex":{}}}}}"#,
        v.address, v.port, v.create_index, v.modify_index
    );
    s
}

/// `{"NodePool":{...}}`.
pub(crate) fn pool(p: &Pool, hash: &str) -> String {
    format!(
        r#"{{"NodePool":{{"Name":"{}","Description":"{}","Meta":{{"owner":"platform"}},"SchedulerConfiguration":null,"NodeIdentityTTL":86400000000000,"Hash":"{hash}","CreateIndex":{},"ModifyIndex":{}}}}}"#,
        p.name, p.description, p.create_index, p.modify_index
    )
}
