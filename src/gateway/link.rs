//! One connection's local link to the rumqttd router, and its flow control: packets for the
//! router go out in one wake-up per batch; what the router has for the client (forwarded
//! events, and `Unschedule` when the link's buffer is full) is written to the client, after
//! which the link must `wake` the router or it stops sending.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet as Out};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};

use super::presence::Deliveries;
use super::wire::Wire;
use crate::broker::Link;
use crate::domain::UserId;

/// Notifications handled before the socket is written, for fairness.
const NOTIFICATION_BATCH: usize = 256;

pub(super) struct RouterLink {
    tx: LinkTx,
    rx: LinkRx,
}

/// The router dropped the link (it replaced or ended the connection).
#[derive(Debug)]
pub(super) struct Gone;

impl RouterLink {
    pub(super) fn new(link: Link) -> Self {
        Self {
            tx: link.tx,
            rx: link.rx,
        }
    }

    /// Hands `packets` to the router in one wake-up. `LinkTx::send` is async in name only: it
    /// pushes to the link's buffer and sends on the router's bounded channel without awaiting. A
    /// full channel can hold this thread until the router thread drains it; the router never
    /// waits on a link, so that is a short stall, never a deadlock.
    pub(super) fn send(&mut self, packets: &mut Vec<Out>) -> Result<(), Gone> {
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        self.tx.buffer().extend(packets.drain(..));
        match ready_now(self.tx.send(last)) {
            Some(Ok(_)) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// The router's next notification (cancel-safe: it stays in the link until taken).
    /// rumqttd's `LinkError` holds a whole router event (over 1 KiB); it is mapped away here so
    /// that no connection's future has to make room for it.
    pub(super) async fn next(&mut self) -> Result<Option<Notification>, Gone> {
        self.rx.next().await.map_err(|_| Gone)
    }

    /// Writes `first` and whatever else the router has ready into `wire`'s output, noting the
    /// `message` events to `user` in `deliveries`. `Ok(true)`: the router paused the link and
    /// needs a [`RouterLink::wake`] once the output is written.
    pub(super) fn drain<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        first: Result<Option<Notification>, Gone>,
        wire: &mut Wire<R, W>,
        user: &UserId,
        deliveries: &mut Deliveries,
    ) -> Result<bool, Gone> {
        let mut wake = false;
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(note) = next.take() {
            match note {
                Err(_) | Ok(Some(Notification::Disconnect(..))) => return Err(Gone),
                Ok(None) => {}
                Ok(Some(Notification::Forward(forward))) => {
                    let publish = forward.publish;
                    deliveries.sent(user, publish.pkid(), &publish.payload);
                    if !wire.queue(Out::Publish(publish, None)) {
                        tracing::warn!(%user, "an event could not be encoded; dropped");
                    }
                }
                Ok(Some(Notification::Unschedule)) => wake = true,
                // Acks of what the gateway already answered itself (SUBACK, UNSUBACK), and
                // anything else the router says, stay here.
                Ok(Some(_)) => {}
            }
            handled += 1;
            if handled < NOTIFICATION_BATCH {
                next = ready_now(self.rx.next()).map(|note| note.map_err(|_| Gone));
            }
        }
        Ok(wake)
    }

    /// Tells the router the link is ready for more. Boxed: the future holds a whole router
    /// event (over 1 KiB) and is needed only when the router paused a full link, so no
    /// connection's future keeps room for it.
    pub(super) async fn wake(&self) -> Result<(), Gone> {
        Box::pin(self.rx.wake()).await.map_err(|_| Gone)
    }

    /// Tells the router this client is gone, so it frees the connection (and, for
    /// `clean_session = false`, keeps the session).
    pub(super) fn leave(&mut self) {
        let goodbye = Out::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        let _ = self.send(&mut vec![goodbye]);
    }
}

/// Polls `future` once; its output if it is ready at once.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
