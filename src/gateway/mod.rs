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
//! Clients come over TCP (`mqtt.listen`) or WebSocket (`mqtt.ws_listen`, path `/mqtt`,
//! subprotocol `mqtt`); both reach the same checks.
//!
//! Local link per connection rather than a TCP proxy in front of rumqttd's own listener: no
//! second socket (and no Nagle on a hop we cannot tune), the gateway sees every packet both
//! ways, and outbox commands need no round trip through the broker's in-memory log.

mod acl;
mod connection;
mod takeover;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
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
    takeovers: Arc<takeover::Takeovers>,
}

pub struct Gateway {
    tcp: TcpListener,
    tcp_addr: SocketAddr,
    ws: Option<(TcpListener, SocketAddr)>,
    shared: Arc<Shared>,
}

/// How a client reaches the gateway.
#[derive(Clone, Copy)]
enum Transport {
    Tcp,
    WebSocket,
}

impl Gateway {
    /// `tcp` serves MQTT over TCP, `ws` (when given) MQTT over WebSocket at `/mqtt`.
    pub fn new(
        tcp: TcpListener,
        ws: Option<TcpListener>,
        auth: Arc<Auth>,
        broker: Broker,
        relay: RelaySender,
    ) -> std::io::Result<Self> {
        let ws = match ws {
            Some(listener) => {
                let addr = listener.local_addr()?;
                Some((listener, addr))
            }
            None => None,
        };
        Ok(Self {
            tcp_addr: tcp.local_addr()?,
            tcp,
            ws,
            shared: Arc::new(Shared {
                auth,
                broker,
                relay,
                takeovers: Arc::default(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The WebSocket address, when `mqtt.ws_listen` is set.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws.as_ref().map(|(_, addr)| *addr)
    }

    /// Accepts connections until `shutdown` turns true, then closes them all and returns once
    /// they are gone (or after a grace period).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Each connection holds a clone; when all are dropped, every connection has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let ws = self.ws.as_ref().map(|(listener, _)| listener);
        loop {
            let (accepted, transport) = tokio::select! {
                _ = stopped(&mut shutdown) => break,
                accepted = self.tcp.accept() => (accepted, Transport::Tcp),
                accepted = accept_if(ws) => (accepted, Transport::WebSocket),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an MQTT connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
            }
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            let alive = alive_tx.clone();
            tokio::spawn(async move {
                match transport {
                    Transport::Tcp => {
                        let (reader, writer) = stream.into_split();
                        connection::serve(reader, writer, peer, shared, shutdown).await;
                    }
                    Transport::WebSocket => websocket::serve(stream, peer, shared, shutdown).await,
                }
                drop(alive);
            });
        }
        drop(self.tcp);
        drop(self.ws);
        drop(alive_tx);
        if tokio::time::timeout(DRAIN_TIMEOUT, alive_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("MQTT connections still open after {DRAIN_TIMEOUT:?}");
        }
    }
}

/// Accepts on `listener`, or never when there is none.
async fn accept_if(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Resolves once `shutdown` is true (the watch guard is dropped inside, so callers stay `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
