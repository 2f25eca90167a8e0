//! The gateway: the MQTT front door and the security boundary. rumqttd has no topic
//! authorisation, so no client ever talks to it directly: the gateway accepts every socket,
//! decodes every packet, and joins each authenticated connection to the router through its own
//! local link.
//!
//! - CONNECT: the access token in `password` is verified and `username` must be its user;
//!   a refusal is a CONNACK "not authorized" (3.1.1 code 5), never a silently dropped socket.
//! - SUBSCRIBE: only `users/{uid}/inbox`; any other filter gets SUBACK failure 0x80.
//! - PUBLISH: only to `users/{uid}/outbox`, whose payloads go straight to the relay (never
//!   through the broker); any other topic closes the connection. The will topic likewise.
//! - Connections close when their token expires or their session logs out.
//!
//! Local link per connection rather than a TCP proxy in front of rumqttd's own listener: no
//! second socket (and no Nagle on a hop we cannot tune), the gateway sees every packet both
//! ways, and outbox commands need no round trip through the broker's in-memory log.

mod acl;
mod connection;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::auth::Auth;
use crate::broker::Broker;
use crate::relay::RelaySender;

/// How long connections get to close after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection needs.
struct Shared {
    auth: Arc<Auth>,
    broker: Broker,
    relay: RelaySender,
}

pub struct Gateway {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Gateway {
    pub fn new(
        listener: TcpListener,
        auth: Arc<Auth>,
        broker: Broker,
        relay: RelaySender,
    ) -> std::io::Result<Self> {
        Ok(Self {
            addr: listener.local_addr()?,
            listener,
            shared: Arc::new(Shared {
                auth,
                broker,
                relay,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts connections until `shutdown` turns true, then closes them all and returns once
    /// they are gone (or after a grace period).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Each connection holds a clone; when all are dropped, every connection has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = self.shared.clone();
                        let shutdown = shutdown.clone();
                        let alive = alive_tx.clone();
                        tokio::spawn(async move {
                            connection::serve(stream, peer, shared, shutdown).await;
                            drop(alive);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting an MQTT connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(self.listener);
        drop(alive_tx);
        if tokio::time::timeout(DRAIN_TIMEOUT, alive_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("MQTT connections still open after {DRAIN_TIMEOUT:?}");
        }
    }
}

/// Resolves once `shutdown` is true (the watch guard is dropped inside, so callers stay `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
