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
