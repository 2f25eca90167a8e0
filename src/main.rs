//! The `tidings` binary: reads `--config`, sets up logging, runs the [`tidings::startup::Application`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

mod allocator;

use tidings::config::{LogFormat, Settings};
use tidings::startup::{shutdown_signal, Application};

const USAGE: &str =
    "usage: tidings [--config PATH]   (default ./broker.toml; a missing file means all defaults)";

/// `tidings --help`.
const HELP: &str = "\
tidings: a backend for private 1:1 chat apps. OTP login over HTTP, messages over MQTT,
history in sled, forwarding by SMS and email.

usage: tidings [--config PATH]
       tidings --help | --version

options:
  -c, --config PATH   the config file (default ./broker.toml). A missing file means the
                      embedded defaults: HTTP on 127.0.0.1:8080, MQTT on 127.0.0.1:1883,
                      data in ./data, login codes printed to the log.
  -h, --help          this text
  -V, --version       the version

Every config key can be set by the environment as TIDINGS_<SECTION>__<KEY>, e.g.
TIDINGS_HTTP__LISTEN=0.0.0.0:8080 or TIDINGS_SMS__TWILIO__AUTH_TOKEN=...; the environment
wins over the file. RUST_LOG filters the log (default warn,tidings=info).

exit status: 0 stopped cleanly (SIGTERM, Ctrl-C); 1 a bad configuration or a failure at
start (one line on stderr names the key, file or address); 2 bad arguments; 75 the store
failed a write and cannot write again without a restart (restart it: nothing acknowledged
is lost).

The README, topics.md (the MQTT side) and SECURITY.md come with the source.";

/// What the command line asks for.
enum Action {
    Run(PathBuf),
    Help,
    Version,
}

fn main() -> ExitCode {
    let config_path = match parse_args(std::env::args().skip(1)) {
        Ok(Action::Run(path)) => path,
        Ok(Action::Help) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Action::Version) => {
            println!("tidings {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut settings = match Settings::load(&config_path) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(settings.log.format);
    if !config_path.exists() {
        tracing::info!(path = %config_path.display(), "no config file; using the defaults");
    }
    tidings::startup::raise_open_files_limit(&mut settings);
    // A write past a file-size limit (`ulimit -f`) is a storage fault like a full disk, to be
    // answered `unavailable` and recovered from, not a reason to die with a core dump.
    // SAFETY: setting a signal to be ignored, before any thread is started.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Action, String> {
    let mut path = PathBuf::from("broker.toml");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Action::Help),
            "-V" | "--version" => return Ok(Action::Version),
            "-c" | "--config" => {
                path = args.next().ok_or("--config needs a path")?.into();
            }
            other => match other.strip_prefix("--config=") {
                Some(value) => path = value.into(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    Ok(Action::Run(path))
}

/// Logs to stderr; `RUST_LOG` filters (default: info for tidings, warnings for the rest).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tidings=info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => log.json().init(),
    }
}
