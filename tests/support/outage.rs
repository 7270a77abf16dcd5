//! A TCP proxy in front of a real server, which a test can cut and restore: the server stays up,
//! but for the service under test it is gone (connections refused and existing ones dropped).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The proxy; dropping it stops it.
pub struct Outage {
    pub address: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Outage {
    /// Proxies a loopback port to `target`.
    pub async fn proxy(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let task = tokio::spawn({
            let (up, cut) = (up.clone(), cut.clone());
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(client); // refused, as far as the client can tell
                        continue;
                    }
                    let cut = cut.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            () = cut.notified() => {} // drops both ends mid-flight
                        }
                    });
                }
            }
        });
        Self {
            address,
            up,
            cut,
            task,
        }
    }

    /// The dependency goes away: new connections are dropped, open ones cut.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// The dependency comes back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
