//! A fault-injecting TCP proxy: forwards a local port to a broker, and on request cuts every
//! open connection, or refuses every connection for a while (an outage), so tests can break
//! a sink's connection mid-run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropping it stops accepting.
pub struct Proxy {
    pub addr: SocketAddr,
    cuts: watch::Sender<u64>,
    down: Arc<AtomicBool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0u64);
        let cuts_for_task = Arc::new(cuts.clone());
        let down = Arc::new(AtomicBool::new(false));
        let down_for_task = down.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if down_for_task.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cuts_for_task.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, cuts, down, accepting }
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
