//! Kafka for the end-to-end tests: the shared tansu broker, a tansu broker of the test's own
//! behind a fault-injecting proxy, and reading back every record of a topic (the Kafka sink
//! crate's test helpers, shared rather than copied).

#[path = "../../sinks/kafka/tests/common/mod.rs"]
mod common;

#[allow(unused_imports)]
pub use common::{Record, read_all, tansu as shared_brokers, unique};

use super::proxy::Proxy;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tansu broker (in memory) that only the test uses, reached through a proxy that the test
/// can take down: clients are told to connect to the proxy, so an outage cuts them all.
pub struct OwnedTansu {
    child: Child,
    pub proxy: Proxy,
}

impl OwnedTansu {
    pub async fn start(dir: &Path) -> OwnedTansu {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap()).await;
        let log = std::fs::File::create(dir.join(format!("tansu-{port}.log"))).unwrap();
        let child = Command::new("tansu")
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{}", proxy.addr))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu is installed (scripts/services.sh kafka installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnedTansu { child, proxy }
    }

    /// The bootstrap address clients use (the proxy).
    pub fn brokers(&self) -> String {
        self.proxy.addr.to_string()
    }
}

impl Drop for OwnedTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates topic `name` with `partitions` partitions (replication 1) and waits until its
/// metadata shows it.
#[allow(dead_code)]
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin.create_topics([&topic], &AdminOptions::new()).await.expect("create_topics");
    for result in results {
        result.expect("topic created");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metadata = admin.inner().fetch_metadata(Some(name), Duration::from_secs(5)).expect("metadata");
        if metadata
            .topics()
            .iter()
            .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
        {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} did not appear");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
