//! The gateway: the MQTT front door and the security boundary. rumqttd has no topic
//! authorisation, so no client ever talks to it directly: the gateway accepts every socket,
//! decodes every packet, and joins each authenticated connection to the router through its own
//! local link.
//!
//! - CONNECT: the access token in `password` is verified and `username` must be its user;
//!   a refusal is a CONNACK the client can read, never a silently dropped socket.
//! - SUBSCRIBE: only `users/{uid}/inbox`; any other filter gets SUBACK failure 0x80.
//! - PUBLISH: only to `users/{uid}/outbox`, whose payloads go straight to the relay (never
//!   through the broker); any other topic closes the connection. The will topic likewise.
//! - Connections close when their token expires or their session logs out.
//! - Every connection is bounded: `mqtt.max_connections` in all, `mqtt.max_connections_per_user`
//!   per user, and sessions kept for `clean_session = false` devices expire.
//!
//! Clients speak MQTT 3.1.1 or 5.0 and come over TCP (`mqtt.listen`) or WebSocket
//! (`mqtt.ws_listen`, path `/mqtt`, subprotocol `mqtt`), plain or TLS; all reach the same checks.
//!
//! Local link per connection rather than a TCP proxy in front of rumqttd's own listener: no
//! second socket (and no Nagle on a hop we cannot tune), the gateway sees every packet both
//! ways, and outbox commands need no round trip through the broker's in-memory log.
//!
//! # Layout
//!
//! - this file: the accept loops, [`Gateway`], housekeeping, and the drain at shutdown;
//! - `codec`: MQTT 3.1.1 and 5.0 packets, decoded into one type and encoded in the client's
//!   version (5.0 reason codes, and two defects of the codecs worked around);
//! - `wire`: byte framing, and the read and write buffers (small while idle);
//! - `handshake`: CONNECT, its checks and its CONNACK;
//! - `admission`: the connection caps;
//! - `session`: one connection's loop, and what happens when it ends;
//! - `packets`: one function per client packet kind;
//! - `link`: the connection's link to the router and its flow control;
//! - `takeover`: who holds which client id, and a new connection replacing an old one;
//! - `kept`: the bound and deadline on sessions kept for devices that went away;
//! - `presence`: who is subscribed, and which events a device acknowledged ([`Presence`]);
//! - `acl`: the topic rules, and the router's name for a connection;
//! - `websocket`: MQTT over WebSocket, bridged to the same session code.

mod acl;
mod admission;
mod codec;
mod handshake;
mod kept;
mod link;
mod packets;
mod presence;
mod session;
mod takeover;
mod websocket;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

pub use handshake::MAX_CLIENT_ID;
pub use presence::{Presence, MAX_WATCHED_PER_USER};

use crate::auth::Auth;
use crate::broker::Broker;
use crate::config::MqttSettings;
use crate::domain::UserId;
use crate::limits::{RateLimiter, Rule, Sometimes};
use crate::relay::RelaySender;
use crate::shutdown::{Shutdown, DRAIN_TIMEOUT};
use crate::tls::TlsAcceptor;

/// What every connection needs.
struct Shared {
    auth: Arc<Auth>,
    broker: Broker,
    relay: RelaySender,
    takeovers: Arc<takeover::Takeovers>,
    admission: Arc<admission::Admission>,
    kept: kept::KeptSessions,
    presence: Presence,
    /// Sends per user per minute (`limits.sends_per_user_per_minute`).
    sends: SendLimit,
    bounds: Bounds,
    /// A place per socket that has not finished CONNECT (`mqtt.max_pending_connects`).
    pending: Arc<Semaphore>,
    /// The warning that sockets are being turned away, at most once a minute.
    turned_away: Sometimes,
}

/// How long a client may take (`mqtt.*_timeout_secs`).
struct Bounds {
    connect: Duration,
    packet: Duration,
}

/// At most `per_minute` sends per user (0: no limit), counted by the connections.
struct SendLimit {
    per_minute: u32,
    sent: RateLimiter<UserId>,
}

impl SendLimit {
    /// Counts one send, or says how long until one is allowed.
    fn try_acquire(&self, user: &UserId) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        self.sent.try_acquire(&[Rule {
            key: user,
            max: self.per_minute,
            window: Duration::from_secs(60),
        }])
    }
}

pub struct Gateway {
    tcp: TcpListener,
    tcp_addr: SocketAddr,
    ws: Option<(TcpListener, SocketAddr)>,
    tls: Option<(TcpListener, SocketAddr)>,
    wss: Option<(TcpListener, SocketAddr)>,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
}

/// Where the gateway listens: MQTT over TCP, and optionally over WebSocket, TLS and secure
/// WebSocket (the last two with `acceptor`).
pub struct Listeners {
    pub tcp: TcpListener,
    pub ws: Option<TcpListener>,
    pub tls: Option<TcpListener>,
    pub wss: Option<TcpListener>,
    pub acceptor: Option<TlsAcceptor>,
}

/// How a client reaches the gateway.
#[derive(Clone, Copy)]
enum Transport {
    Tcp,
    WebSocket,
    Tls,
    SecureWebSocket,
}

impl Gateway {
    /// `tcp` serves MQTT over TCP, `ws` (when given) MQTT over WebSocket at `/mqtt`; commands
    /// go to `relay`, and `presence` learns who is subscribed and what they acknowledged.
    pub fn new(
        listeners: Listeners,
        settings: &MqttSettings,
        auth: Arc<Auth>,
        broker: Broker,
        (relay, presence): (RelaySender, Presence),
        sends_per_minute: u32,
    ) -> std::io::Result<Self> {
        let with_addr = |listener: Option<TcpListener>| -> std::io::Result<_> {
            match listener {
                Some(listener) => {
                    let addr = listener.local_addr()?;
                    Ok(Some((listener, addr)))
                }
                None => Ok(None),
            }
        };
        let Listeners {
            tcp,
            ws,
            tls,
            wss,
            acceptor,
        } = listeners;
        Ok(Self {
            tcp_addr: tcp.local_addr()?,
            tcp,
            ws: with_addr(ws)?,
            tls: with_addr(tls)?,
            wss: with_addr(wss)?,
            acceptor,
            shared: Arc::new(Shared {
                auth,
                broker,
                relay,
                takeovers: Arc::default(),
                admission: admission::Admission::new(
                    settings.max_connections,
                    settings.max_connections_per_user,
                ),
                kept: kept::KeptSessions::new(
                    Duration::from_secs(settings.session_expiry_secs),
                    settings.max_connections_per_user,
                ),
                presence,
                sends: SendLimit {
                    per_minute: sends_per_minute,
                    sent: RateLimiter::new(),
                },
                bounds: Bounds {
                    connect: Duration::from_secs(settings.connect_timeout_secs),
                    packet: Duration::from_secs(settings.packet_timeout_secs),
                },
                pending: Arc::new(Semaphore::new(settings.max_pending_connects)),
                turned_away: Sometimes::new(Duration::from_secs(60)),
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

    /// The MQTT-over-TLS address, when `mqtt.tls_listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|(_, addr)| *addr)
    }

    /// The secure WebSocket address, when `mqtt.wss_listen` is set.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss.as_ref().map(|(_, addr)| *addr)
    }

    /// Who is online and which events their devices acknowledged (for forwarding).
    pub fn presence(&self) -> Presence {
        self.shared.presence.clone()
    }

    /// Accepts connections until `shutdown`, then closes them all and returns once they are
    /// gone (or after [`DRAIN_TIMEOUT`]).
    pub async fn run(self, mut shutdown: Shutdown) {
        // Each connection holds a clone; when all are dropped, every connection has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let ws = self.ws.as_ref().map(|(listener, _)| listener);
        let tls = self.tls.as_ref().map(|(listener, _)| listener);
        let wss = self.wss.as_ref().map(|(listener, _)| listener);
        let housekeeping = tokio::spawn(housekeeping(self.shared.clone(), shutdown.clone()));
        loop {
            let (accepted, transport) = tokio::select! {
                _ = shutdown.recv() => break,
                accepted = self.tcp.accept() => (accepted, Transport::Tcp),
                accepted = accept_if(ws) => (accepted, Transport::WebSocket),
                accepted = accept_if(tls) => (accepted, Transport::Tls),
                accepted = accept_if(wss) => (accepted, Transport::SecureWebSocket),
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
            let Ok(pending) = self.shared.pending.clone().try_acquire_owned() else {
                turn_away(&self.shared, stream, transport);
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
            }
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            let alive = alive_tx.clone();
            let acceptor = self.acceptor.clone();
            tokio::spawn(async move {
                match transport {
                    Transport::Tcp => {
                        let (reader, writer) = stream.into_split();
                        session::serve(reader, writer, peer, shared, shutdown, pending).await;
                    }
                    // Boxed, so that TCP connections' tasks are not sized for the others'.
                    Transport::WebSocket => {
                        Box::pin(websocket::serve(stream, peer, shared, shutdown, pending)).await
                    }
                    Transport::Tls | Transport::SecureWebSocket => {
                        let acceptor = acceptor.expect("TLS listeners come with an acceptor");
                        let secure = transport;
                        Box::pin(async move {
                            let handshake = tokio::time::timeout(
                                shared.bounds.connect,
                                acceptor.accept(stream),
                            );
                            let Ok(Ok(stream)) = handshake.await else {
                                tracing::debug!(%peer, "MQTT TLS handshake failed or too slow");
                                return;
                            };
                            if let Transport::Tls = secure {
                                let (reader, writer) = tokio::io::split(stream);
                                session::serve(reader, writer, peer, shared, shutdown, pending)
                                    .await;
                            } else {
                                websocket::serve(stream, peer, shared, shutdown, pending).await;
                            }
                        })
                        .await
                    }
                }
                drop(alive);
            });
        }
        drop(self.tcp);
        drop(self.ws);
        drop(self.tls);
        drop(self.wss);
        drop(alive_tx);
        if tokio::time::timeout(DRAIN_TIMEOUT, alive_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("MQTT connections still open after {DRAIN_TIMEOUT:?}");
        }
        let _ = housekeeping.await;
    }
}

/// A socket past `mqtt.max_pending_connects`: an MQTT client is told CONNACK 3 "server
/// unavailable" (5.0: 0x89 "server busy") before it asks, or as soon as it has, then the
/// socket closes. Its version is known only if its CONNECT has already arrived; 3.1.1 if not.
fn turn_away(shared: &Shared, stream: TcpStream, transport: Transport) {
    if let Transport::Tcp = transport {
        // Never blocks: what has not arrived is not waited for, and a client that does not
        // read this loses it.
        let mut head = [0u8; 16];
        let v5 = matches!(stream.try_read(&mut head), Ok(n) if codec::connect_level(&head[..n]) == Some(5));
        let refusal: &[u8] = if v5 {
            &[0x20, 0x03, 0x00, 0x89, 0x00]
        } else {
            &[0x20, 0x02, 0x00, 0x03]
        };
        let _ = stream.try_write(refusal);
    }
    if let Some(held) = shared.turned_away.ready() {
        tracing::warn!(
            since_last_warning = held,
            "MQTT socket turned away: mqtt.max_pending_connects sockets have not finished CONNECT"
        );
    }
}

/// Now and then: discards kept sessions past their deadline, and presence watches past theirs.
async fn housekeeping(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(shared.kept.check_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tick.tick() => {}
        }
        kept::discard_expired(&shared).await;
        shared.presence.sweep();
        tracing::trace!(
            connections = shared.admission.total(),
            kept_sessions = shared.kept.len(),
            "MQTT housekeeping"
        );
    }
}

/// Accepts on `listener`, or never when there is none.
async fn accept_if(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}
