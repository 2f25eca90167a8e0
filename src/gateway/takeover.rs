//! Session takeover, done by the gateway rather than by the router. MQTT says a second
//! connection with a client id replaces the first. Left to rumqttd, the router would drop the
//! old link under the old connection's feet; if that connection was just about to `wake` its
//! link, the router thread panics (its tracker for the id is gone), and with it every MQTT
//! connection. So each router client id is claimed here first: a new connection asks the old
//! one to leave the router, waits until it has, and only then opens its own link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// How long a new connection waits for the old one to leave before going ahead anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Takeovers {
    live: Mutex<HashMap<String, Holder>>,
    next_id: AtomicU64,
}

struct Holder {
    id: u64,
    kick: Arc<Notify>,
    gone: watch::Receiver<()>,
}

/// The right to a router client id, until dropped. Drop it only after leaving the router.
pub(super) struct Claim {
    takeovers: Arc<Takeovers>,
    router_id: String,
    id: u64,
    /// Notified when a newer connection wants the id.
    pub kick: Arc<Notify>,
    /// Dropped with the claim: tells the waiting newer connection that this one is gone.
    _gone: watch::Sender<()>,
}

impl Takeovers {
    /// Claims `router_id`, first asking whoever holds it to leave and waiting until it has.
    pub async fn claim(self: &Arc<Self>, router_id: &str) -> Claim {
        loop {
            let holder = {
                let mut live = self.live.lock().expect("takeover lock is never poisoned");
                match live.get(router_id) {
                    Some(holder) => Some((holder.kick.clone(), holder.gone.clone())),
                    None => return self.insert(&mut live, router_id),
                }
            };
            if let Some((kick, mut gone)) = holder {
                kick.notify_one();
                // `changed` ends with an error once the holder's claim is dropped.
                if tokio::time::timeout(LEAVE_TIMEOUT, gone.changed())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        router_id,
                        "the previous connection did not leave in time; taking over"
                    );
                    let mut live = self.live.lock().expect("takeover lock is never poisoned");
                    live.remove(router_id);
                }
            }
        }
    }

    /// Claims `router_id` only if nobody holds it (for housekeeping that must not disturb a
    /// connected device).
    pub fn try_claim(self: &Arc<Self>, router_id: &str) -> Option<Claim> {
        let mut live = self.live.lock().expect("takeover lock is never poisoned");
        (!live.contains_key(router_id)).then(|| self.insert(&mut live, router_id))
    }

    /// Whether a connection holds `router_id` now.
    pub fn is_held(&self, router_id: &str) -> bool {
        self.live
            .lock()
            .expect("takeover lock is never poisoned")
            .contains_key(router_id)
    }

    fn insert(self: &Arc<Self>, live: &mut HashMap<String, Holder>, router_id: &str) -> Claim {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        let (gone_tx, gone_rx) = watch::channel(());
        live.insert(
            router_id.to_owned(),
            Holder {
                id,
                kick: kick.clone(),
                gone: gone_rx,
            },
        );
        Claim {
            takeovers: self.clone(),
            router_id: router_id.to_owned(),
            id,
            kick,
            _gone: gone_tx,
        }
    }
}

impl Claim {
    /// The router client id this claim holds.
    pub fn router_id(&self) -> &str {
        &self.router_id
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut live = self
            .takeovers
            .live
            .lock()
            .expect("takeover lock is never poisoned");
        if live
            .get(&self.router_id)
            .is_some_and(|holder| holder.id == self.id)
        {
            live.remove(&self.router_id);
        }
    }
}
