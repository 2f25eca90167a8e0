//! MQTT over WebSocket: the HTTP upgrade at `/mqtt` (subprotocol `mqtt`), then a bridge that
//! turns binary WebSocket frames into the byte stream the MQTT connection reads, and its bytes
//! back into frames. Past the bridge a WebSocket client is served exactly like a TCP one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{session, Shared};
use crate::shutdown::Shutdown;

/// The path MQTT-over-WebSocket clients use by convention.
pub const PATH: &str = "/mqtt";
const SUBPROTOCOL: &str = "mqtt";
/// The upgrade must be done by then.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes buffered between the bridge and the MQTT connection, each way.
const BRIDGE_BUFFER: usize = 64 * 1024;
/// A frame (and a message) may be at most this big: an MQTT packet's limit, and some framing.
const MAX_FRAME: usize = 512 * 1024;

pub(super) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    pending: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_upgrade, Some(config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket upgrade refused");
            return;
        }
        Err(_) => return,
    };
    let (mqtt_side, bridge_side) = tokio::io::duplex(BRIDGE_BUFFER);
    let bridge = tokio::spawn(bridge(ws, bridge_side));
    let (reader, writer) = tokio::io::split(mqtt_side);
    session::serve(reader, writer, peer, shared, shutdown, pending).await;
    // The connection dropped its side: the bridge sees the end, closes the WebSocket, returns.
    let _ = bridge.await;
}

/// Accepts the upgrade only at `/mqtt`, and agrees on the `mqtt` subprotocol when offered.
#[allow(clippy::result_large_err)] // the signature tungstenite asks for
fn check_upgrade(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != PATH {
        let mut refusal =
            ErrorResponse::new(Some(format!("MQTT over WebSocket is served at {PATH}")));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    if offered {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(response)
}

/// Copies binary frames into `bytes` and `bytes` out as binary frames, until either side ends.
async fn bridge<S>(mut ws: WebSocketStream<S>, mut bytes: DuplexStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(BRIDGE_BUFFER);
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Binary(data))) => {
                    if bytes.write_all(&data).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by tungstenite; pongs and empty frames carry nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // MQTT is binary; text frames and errors end the connection.
                Some(Ok(Message::Text(_) | Message::Close(_)) | Err(_)) | None => break,
            },
            read = bytes.read_buf(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    if ws.send(Message::Binary(buf.split().freeze())).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    let _ = ws.close(None).await;
}
