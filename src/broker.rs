//! The embedded rumqttd router: QoS 1 delivery, sessions and fan-out for the inbox topics. It
//! has no socket of its own: the gateway owns every client socket and joins each connection to
//! the router through a local link, so rumqttd can neither fail to bind nor be reached around
//! the gateway's checks.
//!
//! rumqttd keeps everything in memory: sessions of `clean_session = false` devices and their
//! queued QoS 1 events last while the server runs, bounded by the segment sizes below; history
//! always comes from the store.

use std::sync::Arc;

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::Packet;
use rumqttd::{Router, RouterConfig};

/// rumqttd keeps, per subscribed topic (one per user's inbox), `SEGMENT_COUNT` segments of
/// events, `mqtt.inbox_buffer_bytes` in all, for devices that are away or lag behind. Older
/// events are dropped from the broker (never from history), which bounds its memory; the
/// patched rumqttd frees a topic's log when no connection or kept session needs it.
const SEGMENT_COUNT: usize = 2;
/// Router links beyond the client connections: the relay's, and the short-lived ones that
/// discard kept sessions.
const SPARE_LINKS: usize = 64;

/// `rumqttd`'s router channel type cannot be named from outside the crate, so the builder is
/// kept as a closure over it.
type LinkFactory = Arc<dyn for<'a> Fn(&'a str) -> LinkBuilder<'a> + Send + Sync>;

/// The router would not open a link (too many connections, or the router is gone).
#[derive(Debug, thiserror::Error)]
#[error("the broker refused a link: {0}")]
pub struct LinkRefused(String);

#[derive(Clone)]
pub struct Broker {
    link: LinkFactory,
}

/// A link to the router for one client.
pub struct Link {
    pub tx: LinkTx,
    pub rx: LinkRx,
    /// The router kept a session for this client id (`clean_session = false` before).
    pub session_present: bool,
}

impl Broker {
    /// Spawns the router on its own thread, for up to `max_connections` client connections.
    pub fn start(max_connections: usize, inbox_buffer_bytes: usize) -> Self {
        let config = RouterConfig {
            max_connections: max_connections + SPARE_LINKS,
            max_outgoing_packet_count: 200,
            // rumqttd's router panics on segments under 1 KiB.
            max_segment_size: (inbox_buffer_bytes / SEGMENT_COUNT).max(1024),
            max_segment_count: SEGMENT_COUNT,
            ..RouterConfig::default()
        };
        let router_tx = Router::new(0, config).spawn();
        Self {
            link: Arc::new(move |client_id| LinkBuilder::new(client_id, router_tx.clone())),
        }
    }

    /// Opens a link for `client_id` (router-safe: no `+ $ # /`). Blocks on the router, so it
    /// runs on the blocking pool. An existing link with the same id is closed by the router.
    pub async fn connect(
        &self,
        client_id: String,
        clean_session: bool,
    ) -> Result<Link, LinkRefused> {
        let factory = self.link.clone();
        tokio::task::spawn_blocking(move || {
            let (tx, rx, connack) = factory(&client_id)
                .clean_session(clean_session)
                .build()
                .map_err(|e| LinkRefused(e.to_string()))?;
            let session_present = match Option::<Packet>::from(connack) {
                Some(Packet::ConnAck(ack, _)) => ack.session_present,
                _ => return Err(LinkRefused("no CONNACK from the router".into())),
            };
            Ok(Link {
                tx,
                rx,
                session_present,
            })
        })
        .await
        .expect("opening a link does not panic")
    }

    /// A blocking link for code on its own thread (the relay).
    pub fn connect_blocking(&self, client_id: &str) -> Result<(LinkTx, LinkRx), LinkRefused> {
        let (tx, rx, _) = (self.link)(client_id)
            .clean_session(true)
            .build()
            .map_err(|e| LinkRefused(e.to_string()))?;
        Ok((tx, rx))
    }
}
