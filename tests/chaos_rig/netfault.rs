//! Network faults on loopback, without privileges: a TCP relay in front of each Kafka broker's
//! client port, and the brokers advertise the relay (`IMGPIPE_KAFKA_ADVERTISED_PORT_OFFSET`), so
//! every client and every follower reaches a broker through it. The rig can then delay one
//! broker's traffic or black-hole it, as a slow link or a partition would, while the process
//! runs on. The KRaft quorum's own listener is not relayed: a black-holed broker stays a live
//! voter to the controller, which is the partial partition Kafka cannot see by itself.
//!
//! (A network namespace with `tc netem` would be the usual tool; this kernel has no netem
//! qdisc, and a relay the test owns needs neither root nor one.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What a relay does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Passes bytes through at once.
    Up,
    /// Delivers each chunk `Duration` after it was read, in both directions (one-way delay;
    /// chunks are pipelined, as on a long link, not sent one round trip apart).
    Delay(Duration),
    /// Holds every byte: nothing is delivered and, once the buffers are full, nothing is read,
    /// so senders block as on a partition (no reset, no refusal). When the link comes back, what
    /// was held is delivered, as TCP's retransmission would.
    Blackhole,
}

/// One relay; dropping it stops accepting (open connections end with their peers).
pub struct Relay {
    pub listen: SocketAddr,
    link: Arc<watch::Sender<Link>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Chunks in flight per direction before the relay stops reading (backpressure).
const CHUNKS_IN_FLIGHT: usize = 64;

impl Relay {
    /// Relays `listen` (which must be free) to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen)
            .await
            .expect("the relay's port is free");
        let (link, _) = watch::channel(Link::Up);
        let link = Arc::new(link);
        let task = tokio::spawn({
            let link = link.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let link = link.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pipe(client_read, server_write, link.subscribe()),
                            pipe(server_read, client_write, link.subscribe()),
                        );
                    });
                }
            }
        });
        Self { listen, link, task }
    }

    /// Sets what the link does from now on (to bytes already read too).
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

/// One direction: a reader stamps chunks, a writer delivers each when the link lets it.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: watch::Receiver<Link>) {
    let (chunks, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0
                || chunks
                    .send((Instant::now(), buffer[..n].to_vec()))
                    .await
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        let mut link = link;
        while let Some((read_at, chunk)) = queued.recv().await {
            loop {
                let now = *link.borrow_and_update();
                match now {
                    Link::Up => break,
                    Link::Delay(delay) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(read_at + delay) => break,
                            _ = link.changed() => {}
                        }
                    }
                    Link::Blackhole => {
                        if link.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
