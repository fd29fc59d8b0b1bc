//! A fault-injecting TCP proxy: forwards a local port to a broker, and on request cuts every
//! open connection, refuses every connection for a while (an outage), or freezes: keeps every
//! connection open and passes no byte either way (a broker that hangs), so tests can break a
//! sink's connection mid-run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropping it stops accepting.
pub struct Proxy {
    pub addr: SocketAddr,
    cuts: watch::Sender<u64>,
    down: Arc<AtomicBool>,
    frozen: watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to` until either ends, holding every byte while `frozen` says so.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let Ok(n) = from.read(&mut buffer).await else { return };
        if n == 0 {
            return;
        }
        if frozen.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0u64);
        let cuts_for_task = Arc::new(cuts.clone());
        let down = Arc::new(AtomicBool::new(false));
        let down_for_task = down.clone();
        let (frozen, _) = watch::channel(false);
        let frozen_for_task = frozen.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if down_for_task.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cuts_for_task.subscribe();
                let (up, back) = (frozen_for_task.subscribe(), frozen_for_task.subscribe());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (client_read, client_write) = client.split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pump(client_read, server_write, up) => {}
                        _ = pump(server_read, client_write, back) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, cuts, down, frozen, accepting }
    }

    /// Drops every connection open now (new ones are accepted again at once).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Starts an outage: cuts every connection and refuses new ones until [`Proxy::up`].
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut();
    }

    /// Freezes every connection: open, but no byte passes until [`Proxy::thaw`].
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Lets bytes pass again, the held ones first.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Ends an outage.
    pub fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
