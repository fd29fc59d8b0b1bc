//! NATS for the tests: the shared server on 127.0.0.1:4222 (a test fails with the command to
//! start it when it is missing), test-owned `nats-server` processes on free ports that a test
//! can stop and start, and a reader that returns every message of a stream.

use async_nats::jetstream;
use futures_util::StreamExt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The shared NATS server, checked to be there.
pub fn shared_url() -> String {
    let addr = "127.0.0.1:4222";
    if std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!(
            "NATS is not running on {addr}; start it with `nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/nats-store &` (scripts/test.sh does this)"
        );
    }
    format!("nats://{addr}")
}

/// A unique name for this test's stream and subjects.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}{}", std::process::id(), rand::random::<u32>())
}

/// A nats-server owned by one test, on its own port and store, that it can stop and start.
pub struct OwnedServer {
    pub port: u16,
    store: PathBuf,
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl OwnedServer {
    /// Starts a server with JetStream; `config_text` (nats-server config syntax) is written
    /// to a file and passed with `-c` when given.
    pub fn start(dir: &Path, config_text: Option<&str>) -> OwnedServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = config_text.map(|text| {
            let path = dir.join(format!("nats-{port}.conf"));
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut server =
            OwnedServer { port, store: dir.join(format!("nats-store-{port}")), config, child: None };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), with the same port and store.
    pub fn resume(&mut self) {
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"]).arg(&self.store);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child =
            command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("nats-server is installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the server's configuration; takes effect at the next [`OwnedServer::resume`].
    pub fn set_config(&mut self, dir: &Path, config_text: &str) {
        let path = dir.join(format!("nats-{}.conf", self.port));
        std::fs::write(&path, config_text).unwrap();
        self.config = Some(path);
    }

    /// Stops the server abruptly.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One stored message.
pub struct Stored {
    pub subject: String,
    pub msg_id: String,
    pub index: u64,
    pub payload: String,
}

/// Every message of `stream`, in stream order.
pub async fn read_stream(url: &str, stream: &str) -> Vec<Stored> {
    read_from(async_nats::connect(url).await.unwrap(), stream).await
}

/// [`read_stream`] on a server that wants a user and password.
pub async fn read_stream_as(url: &str, user: &str, password: &str, stream: &str) -> Vec<Stored> {
    let options = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into());
    read_from(options.connect(url).await.unwrap(), stream).await
}

async fn read_from(client: async_nats::Client, stream: &str) -> Vec<Stored> {
    let context = jetstream::new(client);
    let mut stream = context.get_stream(stream).await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig { ..Default::default() })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut stored = Vec::new();
    while (stored.len() as u64) < total {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("messages keep coming")
            .unwrap()
            .unwrap();
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name: &str| headers.get(name).map(|v| v.to_string()).unwrap_or_default();
        stored.push(Stored {
            subject: message.subject.to_string(),
            msg_id: header("Nats-Msg-Id"),
            index: header("Nomad-Index").parse().unwrap_or(0),
            payload: String::from_utf8(message.payload.to_vec()).unwrap(),
        });
    }
    stored
}

/// Deletes a test's stream from a shared server, so runs do not pile up data.
pub async fn delete_stream(url: &str, stream: &str) {
    let client = async_nats::connect(url).await.unwrap();
    jetstream::new(client).delete_stream(stream).await.unwrap();
}
