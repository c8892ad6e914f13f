//! A loopback TCP forwarder that a test can cut: every open connection is
//! reset and new ones are refused until it is restored; or stall: every
//! connection, open or new, stays up and silent until it is restored. Put
//! between the token service and PostgreSQL, it is a database outage (a
//! failover, a network partition, a server that stopped answering) without
//! touching the server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpCut {
    /// `host:port` to connect to instead of the target.
    pub addr: String,
    down: Arc<AtomicBool>,
    stalled: Arc<watch::Sender<bool>>,
    epoch: Arc<watch::Sender<u64>>,
    generation: Arc<AtomicU64>,
}

impl TcpCut {
    /// Forwards a new loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> TcpCut {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind cut");
        let addr = listener.local_addr().expect("addr").to_string();
        let down = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(watch::channel(false).0);
        let epoch = Arc::new(watch::channel(0u64).0);
        let generation = Arc::new(AtomicU64::new(0));
        let target = target.to_owned();
        let accept_down = down.clone();
        let accept_epoch = epoch.clone();
        let accept_stalled = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept_down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut stall = accept_stalled.subscribe();
                if *stall.borrow() {
                    // Accepted, never answered, closed when restored.
                    tokio::spawn(async move {
                        let _ = stall.wait_for(|stalled| !stalled).await.is_ok();
                        drop(client);
                    });
                    continue;
                }
                let target = target.clone();
                // Subscribed now: only a cut after this connection ends it.
                let mut cut = accept_epoch.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let stalled = tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => false,
                        _ = tokio::io::copy(&mut sr, &mut cw) => false,
                        _ = cut.changed() => false,
                        stalled = async { stall.wait_for(|stalled| *stalled).await.is_ok() } => stalled,
                    };
                    if stalled {
                        // Both sockets stay open and silent until restored.
                        let _ = stall.wait_for(|stalled| !stalled).await.is_ok();
                    }
                });
            }
        });
        TcpCut {
            addr,
            down,
            stalled,
            epoch,
            generation,
        }
    }

    /// The outage begins: open connections are dropped, new ones refused.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.epoch.send(next);
    }

    /// The database stops answering: open connections and new ones are
    /// held open without a byte either way.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// The outage ends (stalled connections are closed).
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.stalled.send_replace(false);
    }
}
