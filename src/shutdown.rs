//! Graceful shutdown, as in mini-redis: one [`Trigger`] held by `startup`, any number of
//! [`Shutdown`] listeners held by what must stop (the HTTP server, the gateway, each MQTT
//! connection). Once triggered, everything stops accepting work and drains within
//! [`DRAIN_TIMEOUT`].

use std::time::Duration;

use tokio::sync::watch;

/// How long each part gets to finish what is in flight after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the shutdown; dropping it does too.
pub struct Trigger(watch::Sender<bool>);

/// Tells its holder that shutdown has begun. Clone one per task.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A trigger and the listener that all others are cloned from.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (at once if it has).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_hears_it_once_triggered() {
        let (trigger, shutdown) = channel();
        let mut a = shutdown.clone();
        let mut b = shutdown;
        assert!(!a.is_shutdown());
        trigger.trigger();
        a.recv().await;
        b.recv().await;
        assert!(a.is_shutdown() && b.is_shutdown());
    }

    #[tokio::test]
    async fn a_dropped_trigger_shuts_down_too() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        tokio::time::timeout(Duration::from_secs(1), shutdown.recv())
            .await
            .expect("recv returns once the trigger is gone");
    }
}
