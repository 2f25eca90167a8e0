//! One integration test binary: every test starts the real `tidings` binary (see `helpers`) and
//! talks to it over real sockets.

mod helpers;
mod http;
mod lifecycle;
mod login;
mod tokens;
