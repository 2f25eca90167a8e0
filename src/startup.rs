//! `Application`: binds every listener (so a port in use is an error naming the key), opens the
//! store, wires the services, runs until a shutdown signal, then stops in order: stop
//! accepting, drain, make the store durable.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::auth::{Auth, Keys};
use crate::broker::Broker;
use crate::config::Settings;
use crate::forward::{self, Forwarder, Providers};
use crate::gateway::{Gateway, Presence};
use crate::notify;
use crate::relay;
use crate::shutdown;
use crate::shutdown::Shutdown;
use crate::store::{Probe, Store};

pub struct Application {
    http_listener: TcpListener,
    http_addr: SocketAddr,
    http_bounds: api::server::Bounds,
    /// HTTPS (`http.tls_listen`) and its acceptor.
    https: Option<(TcpListener, crate::tls::TlsAcceptor)>,
    gateway: Gateway,
    relay: std::thread::JoinHandle<()>,
    store: Store,
    state: AppState,
    forwarder: Forwarder,
}

impl Application {
    /// Binds and opens everything `settings` names. Errors are one line naming the key.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let http_listener = bind("http.listen", &settings.http.listen).await?;
        let http_addr = http_listener
            .local_addr()
            .context("reading the HTTP address")?;
        let mqtt_listener = bind("mqtt.listen", &settings.mqtt.listen).await?;
        let ws_listener = bind_if("mqtt.ws_listen", &settings.mqtt.ws_listen).await?;
        let https_listener = bind_if("http.tls_listen", &settings.http.tls_listen).await?;
        let mqtts_listener = bind_if("mqtt.tls_listen", &settings.mqtt.tls_listen).await?;
        let wss_listener = bind_if("mqtt.wss_listen", &settings.mqtt.wss_listen).await?;
        let tls = match (&https_listener, &mqtts_listener, &wss_listener) {
            (None, None, None) => None,
            _ => Some(crate::tls::acceptor(&settings.tls)?),
        };

        let store_path = &settings.storage.path;
        let store = Store::open(store_path, settings.storage.cache_bytes).with_context(|| {
            format!(
                "storage.path: cannot open the store at {}",
                store_path.display()
            )
        })?;
        let keys =
            Keys::load(settings.auth.jwt_secret.as_ref(), store_path).context("auth.jwt_secret")?;
        let sms = notify::sms_sender(&settings.sms).context("sms")?;
        let email = notify::email_sender(&settings.email).context("email")?;
        let auth = Arc::new(Auth::new(
            store.clone(),
            keys,
            settings.auth.clone(),
            settings.limits.clone(),
            sms.clone(),
            email.clone(),
        ));
        let broker = Broker::start(
            settings.mqtt.max_connections,
            settings.mqtt.inbox_buffer_bytes,
        );
        let presence = Presence::default();
        let (wakeup, forward_inbox) = forward::queue();
        let forwarding = relay::Forwarding {
            presence: presence.clone(),
            delay: std::time::Duration::from_secs(settings.forwarding.delay_secs),
            wakeup,
        };
        let (relay_tx, relay) =
            relay::spawn(store.clone(), &broker, forwarding).context("starting the relay")?;
        let providers = Providers {
            sms,
            email,
            auth: auth.clone(),
            public_base: match &settings.http.public_url {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None => format!("http://{http_addr}"),
            },
        };
        let forwarder = Forwarder::new(
            store.clone(),
            presence.clone(),
            providers,
            settings.forwarding.clone(),
            forward_inbox,
        );
        let gateway = Gateway::new(
            crate::gateway::Listeners {
                tcp: mqtt_listener,
                ws: ws_listener,
                tls: mqtts_listener,
                wss: wss_listener,
                acceptor: tls.clone(),
            },
            &settings.mqtt,
            auth.clone(),
            broker,
            (relay_tx, presence),
            settings.limits.sends_per_user_per_minute,
        )
        .context("mqtt.listen")?;
        let state = AppState {
            auth,
            store: store.clone(),
        };
        Ok(Self {
            http_listener,
            http_addr,
            http_bounds: api::server::Bounds::of(&settings.http),
            https: https_listener.zip(tls),
            gateway,
            relay,
            store,
            state,
            forwarder,
        })
    }

    /// The bound HTTP address (the real port when the config said 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound MQTT address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    /// Who is online, and which events their devices acknowledged.
    pub fn presence(&self) -> Presence {
        self.gateway.presence()
    }

    /// Serves until `shutdown` resolves, then drains and makes the store durable.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (trigger, stop) = shutdown::channel();
        let shown =
            |addr: Option<SocketAddr>| addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        let https_addr = shown(match &self.https {
            Some((listener, _)) => {
                Some(listener.local_addr().context("reading the HTTPS address")?)
            }
            None => None,
        });
        let https = self.https.map(|(listener, tls)| {
            tokio::spawn(api::server::serve(
                listener,
                Some(tls),
                api::router(self.state.clone()),
                self.http_bounds.clone(),
                stop.clone(),
            ))
        });
        let http = tokio::spawn(api::server::serve(
            self.http_listener,
            None,
            api::router(self.state.clone()),
            self.http_bounds,
            stop.clone(),
        ));
        let mqtt_addr = self.gateway.local_addr();
        let (ws, mqtts, wss) = (
            shown(self.gateway.ws_addr()),
            shown(self.gateway.tls_addr()),
            shown(self.gateway.wss_addr()),
        );
        let forwarder = tokio::spawn(self.forwarder.run(stop.clone()));
        tokio::spawn(watch_storage(self.store.clone(), stop.clone()));
        let gateway = tokio::spawn(self.gateway.run(stop));
        tracing::info!(
            http = %self.http_addr,
            mqtt = %mqtt_addr,
            ws = %ws,
            https = %https_addr,
            mqtts = %mqtts,
            wss = %wss,
            "tidings ready"
        );

        shutdown.await;
        tracing::info!("shutting down: no new connections, draining");
        trigger.trigger();
        http.await.context("HTTP server task")?;
        if let Some(https) = https {
            https.await.context("HTTPS server task")?;
        }
        // The gateway returns once its connections are closed; with them go the last handles
        // on the relay's queue, so the relay finishes what was queued and stops.
        gateway.await.context("MQTT gateway task")?;
        forwarder.await.context("forwarding task")?;
        let relay = self.relay;
        tokio::task::spawn_blocking(move || relay.join())
            .await
            .context("joining the relay")?
            .map_err(|_| anyhow::anyhow!("the relay thread panicked"))?;
        self.store
            .durable_async()
            .await
            .context("flushing the store")?;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

/// The exit status when the store failed a write and cannot write again without being opened
/// anew (`EX_TEMPFAIL`): a supervisor's restart is the recovery.
pub const EXIT_STORE_STUCK: i32 = 75;

/// Once a second while the store is faulted: has the fault cleared? When the disk takes writes
/// again but the store does not (sled never does after a failed write), ends the process with
/// [`EXIT_STORE_STUCK`] and one line saying why: everything acknowledged is durable already,
/// and a restart opens the store from exactly that.
async fn watch_storage(store: Store, mut stop: Shutdown) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = tick.tick() => {}
        }
        if store.healthy() {
            continue;
        }
        let probing = store.clone();
        let probed = tokio::task::spawn_blocking(move || probing.probe()).await;
        if let Ok(Probe::StoreStuck(error)) = probed {
            tracing::error!(
                %error,
                "storage: the disk takes writes again but the store cannot without being reopened; exiting with status {EXIT_STORE_STUCK} for a supervisor to restart tidings (nothing acknowledged is lost)"
            );
            std::process::exit(EXIT_STORE_STUCK);
        }
    }
}

/// File descriptors kept for everything but client sockets: the store's files, the listeners,
/// the providers' connections, and a socket over a cap that must still be told so.
const SPARE_FILES: u64 = 256;

/// Raises the soft limit on open files to the hard limit: every connection is a file
/// descriptor, and the usual soft limit (1024) is far below `mqtt.max_connections`. When even
/// the hard limit is too low for `mqtt.max_connections` next to the HTTP connections and the
/// MQTT sockets still in CONNECT (each capped too), lowers that cap to fit (and says so), so
/// that clients past it get CONNACK 3 rather than a socket the OS refused, and a flood on one
/// side cannot take the descriptors of the other.
pub fn raise_open_files_limit(settings: &mut Settings) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "reading the open-files limit");
            return;
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "raising the open-files limit");
                limit.rlim_cur = before;
            }
        }
        tracing::info!(
            was = before,
            now = limit.rlim_cur,
            "open-files limit (RLIMIT_NOFILE): soft limit set to the hard limit"
        );
        share_open_files(limit.rlim_cur, settings);
    }
    #[cfg(not(unix))]
    let _ = settings;
}

/// Splits the open-files limit among the client sockets: HTTP connections and MQTT sockets in
/// CONNECT get at most an eighth of it each, MQTT connections what is left; each cap is lowered
/// to its share (and the log says so), never raised.
fn share_open_files(open_files: u64, settings: &mut Settings) {
    let budget = open_files.saturating_sub(SPARE_FILES).max(8);
    let lower = |key: &str, cap: &mut usize, share: u64| {
        if *cap as u64 > share {
            tracing::warn!(
                open_files,
                configured = *cap,
                now = share,
                "{key} lowered to fit the open-files limit; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) to allow more"
            );
            *cap = share as usize;
        }
    };
    lower(
        "http.max_connections",
        &mut settings.http.max_connections,
        budget / 8,
    );
    lower(
        "mqtt.max_pending_connects",
        &mut settings.mqtt.max_pending_connects,
        budget / 8,
    );
    let others = (settings.http.max_connections + settings.mqtt.max_pending_connects) as u64;
    lower(
        "mqtt.max_connections",
        &mut settings.mqtt.max_connections,
        budget - others,
    );
}

/// Binds `addr` if the config key `key` has one.
async fn bind_if(key: &str, addr: &Option<String>) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => Ok(Some(bind(key, addr).await?)),
        None => Ok(None),
    }
}

/// Binds `addr` (from config key `key`), naming both when it fails.
pub async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
