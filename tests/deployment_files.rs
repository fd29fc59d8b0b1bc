//! The deployment files (Dockerfile, docker-compose.yml, deploy/compose-relay.toml,
//! nomad-relay.nomad.hcl) and the README's instructions for them agree with each other and
//! with the relay: the configurations load with the relay's own loader, every published port
//! stays on loopback, and image name, port, paths and user are the same everywhere.

use nomad_relay::config::{Config, LoadFrom, SinkKindConfig};
use serde_yaml_ng::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const IMAGE: &str = "ghcr.io/nomad-relay/nomad-relay:0.1.0";
const BINARY: &str = "/usr/local/bin/nomad-relay";
const DATA_DIR: &str = "/var/lib/nomad-relay";
const HTTP_PORT: u16 = 8686;
const COMPOSE_CONFIG: &str = "./deploy/compose-relay.toml";
const CONFIG_IN_CONTAINER: &str = "/etc/nomad-relay/relay.toml";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---- docker-compose.yml ------------------------------------------------------------------------

fn compose() -> Value {
    serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is valid YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

fn string_list(value: &Value, what: &str) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {value:?}"))
        .iter()
        .map(|item| match item {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            other => panic!("{what} has an entry that is not a string: {other:?}"),
        })
        .collect()
}

/// The command a healthcheck runs: `test` in exec form without its leading `CMD`.
fn healthcheck_command(service: &Value, name: &str) -> Vec<String> {
    let test = service
        .get("healthcheck")
        .and_then(|check| check.get("test"))
        .unwrap_or_else(|| panic!("service `{name}` has no healthcheck.test"));
    let words = string_list(test, &format!("{name}.healthcheck.test"));
    assert_eq!(
        words.first().map(String::as_str),
        Some("CMD"),
        "service `{name}`: write the healthcheck in exec form, [\"CMD\", ...]"
    );
    words[1..].to_vec()
}

#[test]
fn compose_has_exactly_the_five_services_each_with_a_healthcheck() {
    let compose = compose();
    assert!(compose.get("version").is_none(), "the Compose spec has no `version:` key");
    let services = compose.get("services").and_then(Value::as_mapping).expect("a services mapping");
    let names: BTreeSet<&str> = services.keys().map(|key| key.as_str().expect("a service name")).collect();
    let expected: BTreeSet<&str> = ["nomad", "kafka", "nats", "rabbitmq", "relay"].into_iter().collect();
    assert_eq!(names, expected);
    for name in &expected {
        let command = healthcheck_command(service(&compose, name), name);
        assert!(!command.is_empty(), "service `{name}`: the healthcheck runs nothing");
    }
}

#[test]
fn compose_publishes_every_port_on_loopback_only() {
    let compose = compose();
    let services = compose.get("services").and_then(Value::as_mapping).expect("a services mapping");
    let mut published = 0;
    for (name, service) in services {
        let name = name.as_str().expect("a service name");
        let Some(ports) = service.get("ports") else { continue };
        for port in string_list(ports, &format!("{name}.ports")) {
            assert!(
                port.starts_with("127.0.0.1:"),
                "service `{name}` publishes `{port}` beyond loopback; write it as 127.0.0.1:HOST:CONTAINER"
            );
            published += 1;
        }
    }
    // Nomad 4646, Kafka 29092, NATS 4222 and 8222, RabbitMQ 5672 and 15672, the relay 8686.
    assert_eq!(published, 7, "the README lists seven published ports");
}

#[test]
fn compose_relay_uses_the_image_the_build_and_the_mounted_config() {
    let compose = compose();
    let relay = service(&compose, "relay");
    assert_eq!(relay.get("image").and_then(Value::as_str), Some(IMAGE));
    assert_eq!(relay.get("build").and_then(Value::as_str), Some("."));

    let volumes = string_list(relay.get("volumes").expect("relay volumes"), "relay.volumes");
    let config_mount = format!("{COMPOSE_CONFIG}:{CONFIG_IN_CONTAINER}:ro");
    assert!(volumes.contains(&config_mount), "relay must mount {config_mount}, has {volumes:?}");
    assert!(repo_file(COMPOSE_CONFIG).is_file(), "{COMPOSE_CONFIG} must exist");
    let data_volume = volumes
        .iter()
        .find(|volume| volume.split(':').nth(1) == Some(DATA_DIR))
        .unwrap_or_else(|| panic!("relay mounts nothing at {DATA_DIR}: {volumes:?}"));
    let volume_name = data_volume.split(':').next().expect("a volume source");
    assert!(
        compose.get("volumes").and_then(|volumes| volumes.get(volume_name)).is_some(),
        "the relay's data volume `{volume_name}` must be a named volume, declared under volumes:"
    );

    let ports = string_list(relay.get("ports").expect("relay ports"), "relay.ports");
    assert_eq!(ports, vec![format!("127.0.0.1:{HTTP_PORT}:{HTTP_PORT}")]);

    let command = string_list(relay.get("command").expect("relay command"), "relay.command");
    assert_eq!(command, vec!["run", "--config", CONFIG_IN_CONTAINER]);

    let depends_on =
        relay.get("depends_on").and_then(Value::as_mapping).expect("relay depends_on, long form");
    for other in ["nomad", "kafka", "nats", "rabbitmq"] {
        let condition =
            depends_on.get(other).and_then(|entry| entry.get("condition")).and_then(Value::as_str);
        assert_eq!(condition, Some("service_healthy"), "relay must wait for `{other}` to be healthy");
    }

    let health = healthcheck_command(relay, "relay");
    assert!(
        health.last().is_some_and(|url| url == &format!("http://127.0.0.1:{HTTP_PORT}/readyz")),
        "the relay's healthcheck must GET /readyz on port {HTTP_PORT}: {health:?}"
    );
}

// ---- deploy/compose-relay.toml -----------------------------------------------------------------

#[test]
fn compose_relay_config_loads_and_points_at_the_compose_services() {
    let path = repo_file(COMPOSE_CONFIG);
    let config = Config::load(LoadFrom { file: Some(&path), environment: false })
        .unwrap_or_else(|e| panic!("{COMPOSE_CONFIG} does not load: {e}"));

    assert_eq!(config.data_dir, Path::new(DATA_DIR));
    let http = config.http.as_ref().expect("an [http] table, for the compose healthcheck");
    assert_eq!(http.listen.port(), HTTP_PORT);
    assert!(http.listen.ip().is_unspecified(), "inside the container listen on 0.0.0.0, not {}", http.listen);
    assert!(config.routes.is_empty(), "no routes: every event to every sink");

    assert_eq!(config.nomad.len(), 1);
    assert_eq!(config.nomad[0].address.to_vec(), vec!["http://nomad:4646".to_owned()]);

    let names: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
    assert_eq!(names, vec!["kafka", "nats", "rabbit"]);

    let compose = compose();
    match &config.sinks["kafka"].kind {
        SinkKindConfig::Kafka(kafka) => {
            assert_eq!(kafka.brokers.to_vec(), vec!["kafka:9092".to_owned()]);
            let create = kafka.create_topics.as_ref().expect("create_topics");
            assert_eq!((create.partitions, create.replication), (3, 1), "one broker: replication 1");
            let advertised = service(&compose, "kafka")
                .get("environment")
                .and_then(|env| env.get("KAFKA_ADVERTISED_LISTENERS"))
                .and_then(Value::as_str)
                .expect("kafka KAFKA_ADVERTISED_LISTENERS");
            assert!(
                advertised.contains("://kafka:9092"),
                "Kafka must advertise kafka:9092 to the relay: {advertised}"
            );
        }
        other => panic!("sink `kafka` is not a Kafka sink: {other:?}"),
    }
    match &config.sinks["nats"].kind {
        SinkKindConfig::Nats(nats) => {
            assert_eq!(nats.url.to_vec(), vec!["nats://nats:4222".to_owned()]);
            assert_eq!(nats.stream.as_deref(), Some("NOMAD"));
            assert!(nats.create_stream);
            assert!(nats.jetstream, "the compose NATS runs JetStream (-js)");
        }
        other => panic!("sink `nats` is not a NATS sink: {other:?}"),
    }
    match &config.sinks["rabbit"].kind {
        SinkKindConfig::Amqp(amqp) => {
            assert!(amqp.declare);
            assert_eq!(amqp.queues.len(), 1);
            let queue = &amqp.queues[0];
            assert_eq!(queue.name, "nomad-events");
            assert_eq!(queue.bindings, vec!["#".to_owned()]);
            assert!(queue.quorum);
        }
        other => panic!("sink `rabbit` is not an AMQP sink: {other:?}"),
    }
    // The AMQP URI is a secret (never printed), so check the host in the file's text.
    assert!(read(COMPOSE_CONFIG).contains("uri = \"amqp://guest:guest@rabbitmq:5672/%2f\""));
}

// ---- nomad-relay.nomad.hcl ---------------------------------------------------------------------

fn block<'a>(body: &'a hcl::Body, identifier: &str) -> &'a hcl::Block {
    let mut blocks = body.blocks().filter(|block| block.identifier() == identifier);
    let found = blocks.next().unwrap_or_else(|| panic!("no `{identifier}` block"));
    assert!(blocks.next().is_none(), "more than one `{identifier}` block");
    found
}

fn labelled<'a>(body: &'a hcl::Body, identifier: &str, label: &str) -> &'a hcl::Block {
    body.blocks()
        .find(|block| {
            block.identifier() == identifier
                && block.labels().first().is_some_and(|first| first.as_str() == label)
        })
        .unwrap_or_else(|| panic!("no `{identifier} \"{label}\"` block"))
}

fn attribute<'a>(body: &'a hcl::Body, key: &str) -> &'a hcl::Expression {
    body.attributes()
        .find(|attribute| attribute.key() == key)
        .map(|attribute| attribute.expr())
        .unwrap_or_else(|| panic!("no `{key}` attribute"))
}

/// A string attribute, quoted or heredoc, as written (Nomad's own interpolations left as is).
fn text(expression: &hcl::Expression) -> String {
    match expression {
        hcl::Expression::String(text) => text.clone(),
        hcl::Expression::TemplateExpr(template) => template.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

fn integer(expression: &hcl::Expression) -> i64 {
    match expression {
        hcl::Expression::Number(number) => number.as_i64().expect("an integer"),
        other => panic!("not a number: {other:?}"),
    }
}

fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{duration}` is not a duration in seconds"))
}

#[test]
fn nomad_job_runs_one_relay_with_its_volume_port_check_and_config() {
    let body = hcl::parse(&read("nomad-relay.nomad.hcl")).expect("nomad-relay.nomad.hcl is valid HCL");
    let job = labelled(&body, "job", "nomad-relay").body();
    assert_eq!(text(attribute(job, "type")), "service");

    let group = block(job, "group").body();
    assert_eq!(integer(attribute(group, "count")), 1, "exactly one relay: it locks its data_dir");

    let network = block(group, "network").body();
    let http_port = labelled(network, "port", "http").body();
    assert_eq!(integer(attribute(http_port, "static")), i64::from(HTTP_PORT));

    let service = block(group, "service").body();
    assert_eq!(text(attribute(service, "port")), "http");
    let check = block(service, "check").body();
    assert_eq!(text(attribute(check, "type")), "http");
    assert_eq!(text(attribute(check, "path")), "/readyz");

    let volume = labelled(group, "volume", "data").body();
    assert_eq!(text(attribute(volume, "type")), "host");
    assert_eq!(text(attribute(volume, "source")), "nomad-relay-data");

    let task = block(group, "task").body();
    assert_eq!(text(attribute(task, "driver")), "docker");
    let docker = block(task, "config").body();
    assert_eq!(text(attribute(docker, "image")), IMAGE);

    // Nomad clients cap kill_timeout at max_kill_timeout (30 s by default); the relay's own
    // deadline (checked below, in the rendered config) must be shorter.
    let kill_timeout = seconds(&text(attribute(task, "kill_timeout")));
    assert!(kill_timeout <= 30, "kill_timeout {kill_timeout}s is above Nomad's default max_kill_timeout");

    // NOMAD_TOKEN comes from the workload identity.
    let identity = block(task, "identity").body();
    assert!(matches!(attribute(identity, "env"), hcl::Expression::Bool(true)));

    // The config the template renders is the one the relay is started with ...
    let template = block(task, "template").body();
    let destination = text(attribute(template, "destination"));
    let file_name = destination.strip_prefix("local/").expect("a template under local/ (NOMAD_TASK_DIR)");
    let args = match attribute(docker, "args") {
        hcl::Expression::Array(items) => items.iter().map(text).collect::<Vec<_>>(),
        other => panic!("args is not a list: {other:?}"),
    };
    assert_eq!(
        args,
        vec!["run".to_owned(), "--config".to_owned(), format!("${{NOMAD_TASK_DIR}}/{file_name}")]
    );

    // ... it loads (once Nomad has filled in the node's address) ...
    let rendered = text(attribute(template, "data"))
        .replace(r#"{{ env "attr.unique.network.ip-address" }}"#, "192.0.2.10");
    assert!(!rendered.contains("{{"), "the test only knows how to render the node address: {rendered}");
    let config = Config::from_toml(&rendered)
        .unwrap_or_else(|e| panic!("the templated relay.toml does not load: {e}"));
    assert_eq!(config.nomad[0].address.to_vec(), vec!["http://192.0.2.10:4646".to_owned()]);
    // Nomad sets NOMAD_NAMESPACE (the job's own) in every task; the file must override it.
    assert_eq!(config.nomad[0].namespace, "*", "the relay follows every namespace");
    assert!(
        config.shutdown_timeout.0.as_secs() < kill_timeout,
        "the relay's shutdown_timeout must end before Nomad's kill_timeout"
    );
    let http = config.http.as_ref().expect("an [http] table, for the service check");
    assert_eq!(http.listen.port(), HTTP_PORT);

    // ... and keeps its state on the host volume.
    let mount = block(task, "volume_mount").body();
    assert_eq!(text(attribute(mount, "volume")), "data");
    assert_eq!(Path::new(&text(attribute(mount, "destination"))), config.data_dir);
    assert_eq!(config.data_dir, Path::new(DATA_DIR));
}

// ---- Dockerfile --------------------------------------------------------------------------------

/// The Dockerfile's last stage, as (INSTRUCTION, arguments) with continuation lines joined.
fn runtime_stage() -> Vec<(String, String)> {
    let joined = read("Dockerfile").replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (instruction, arguments) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            (instruction.to_ascii_uppercase(), arguments.trim().to_owned())
        })
        .collect();
    let last_from = instructions.iter().rposition(|(instruction, _)| instruction == "FROM").expect("a FROM");
    assert!(last_from > 0, "a multi-stage build: the runtime stage is not the first");
    instructions[last_from..].to_vec()
}

fn exec_form(arguments: &str) -> Vec<String> {
    serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("`{arguments}` is not in exec (JSON) form: {e}"))
}

#[test]
fn dockerfile_runtime_runs_the_relay_as_a_non_root_user() {
    let stage = runtime_stage();
    let last = |name: &str| {
        stage
            .iter()
            .rev()
            .find(|(instruction, _)| instruction == name)
            .map(|(_, arguments)| arguments.clone())
            .unwrap_or_else(|| panic!("the runtime stage has no {name}"))
    };

    let user = last("USER");
    let user = user.split(':').next().expect("a user");
    assert!(!["root", "0", ""].contains(&user), "the runtime stage must not run as root: USER {user}");
    let run =
        stage.iter().filter(|(i, _)| i == "RUN").map(|(_, a)| a.as_str()).collect::<Vec<_>>().join("\n");
    assert!(
        run.contains("--uid 10001") && run.contains(user),
        "the runtime stage must create `{user}` with uid 10001"
    );

    let entrypoint = exec_form(&last("ENTRYPOINT"));
    assert_eq!(entrypoint, vec![BINARY]);
    let copies_binary = stage.iter().any(|(instruction, arguments)| {
        instruction == "COPY" && arguments.starts_with("--from=") && arguments.ends_with(BINARY)
    });
    assert!(copies_binary, "the runtime stage must COPY the built binary to {BINARY}");

    // The image's default command is the one compose runs, with the config compose mounts.
    let cmd = exec_form(&last("CMD"));
    let compose = compose();
    let relay = service(&compose, "relay");
    let compose_command = string_list(relay.get("command").expect("relay command"), "relay.command");
    assert_eq!(cmd, compose_command);

    // Whatever the compose healthcheck runs must be in the image.
    let health = healthcheck_command(relay, "relay");
    let program = health.first().expect("a healthcheck program");
    if program != BINARY {
        assert!(
            run.contains("apt-get install") && run.split_whitespace().any(|word| word == program),
            "the relay healthcheck runs `{program}`, which the runtime stage does not install"
        );
    }

    let volume = exec_form(&last("VOLUME"));
    assert_eq!(volume, vec![DATA_DIR]);
    assert!(
        run.contains(&format!("-o {user}")) && run.contains(DATA_DIR),
        "{DATA_DIR} must belong to `{user}`"
    );
    assert_eq!(last("EXPOSE"), HTTP_PORT.to_string());
}

// ---- README.md ---------------------------------------------------------------------------------

#[test]
fn readme_documents_both_deployments() {
    let readme = read("README.md");
    for needle in [IMAGE, "8686", "docker compose up", "nomad job run nomad-relay.nomad.hcl"] {
        assert!(readme.contains(needle), "README.md must mention `{needle}`");
    }
}
