//! One integration test binary: every test starts the real `tidings` binary (see `helpers`) and
//! talks to it over real sockets.

mod accounts;
mod acl;
mod clients;
mod conversations;
mod durability;
mod forwarding;
mod hardening;
mod helpers;
mod history;
mod http;
mod lifecycle;
mod limits;
mod login;
mod memory;
mod messaging;
mod mosquitto;
mod mqtt5;
mod presence;
mod sessions;
mod specs;
mod tls;
mod tokens;
mod walkthrough;
mod websocket;
