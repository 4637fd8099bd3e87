//! `sockeye`: a command-line client for the Sockeye protocol, with JSON in and out.

mod json;
mod terminal;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use sockeye::{Certificate, Client, ClientBuilder, Error, Status, TopicEvent, Transition};

const EXIT_HELP: &str = "\
JSON payloads are converted to and from CBOR. In replies and events, byte strings are printed as base64
strings, tags are dropped (their content is kept), integers beyond 64 bits and non-finite floats become
strings, and map keys that are not text become their JSON text.

Exit codes:
  0  success
  1  any other failure (e.g. a reply that cannot be shown)
  2  usage: bad arguments, invalid JSON, invalid URL, header or certificate
  3  could not connect: refused, authentication failed (4003, HTTP 401/403), attempts exhausted, connection lost
  4  timed out (--timeout, or the request's DEADLINE_EXCEEDED)
  5  the server answered with an error (its code and message are printed to stderr)

Examples:
  sockeye request ws://localhost:8080/ws echo '{\"hello\":\"world\"}'
  sockeye send --token s3cret ws://localhost:8080/ws audit '{\"event\":\"login\"}'
  sockeye listen ws://localhost:8080/ws prices news      # JSON lines: {\"topic\":..,\"seq\":..,\"data\":..}
  sockeye publish ws://localhost:8080/ws prices 42.5
  sockeye status --watch ws://localhost:8080/ws";

/// A command-line client for Sockeye servers (PROTOCOL.md): requests, messages, topics and connection status.
#[derive(Parser, Debug)]
#[command(name = "sockeye", version, after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Call METHOD with JSON (default null; `-` reads stdin) and print the reply as one line of JSON.
    Request {
        /// The server's WebSocket URL, e.g. ws://localhost:8080/ws or wss://…
        url: String,
        /// The method to call.
        method: String,
        /// The request payload as JSON (`-`: read stdin; absent: null).
        json: Option<String>,
    },
    /// Send a one-way message NAME with JSON (default null; `-` reads stdin).
    Send {
        /// The server's WebSocket URL, e.g. ws://localhost:8080/ws or wss://…
        url: String,
        /// The message name.
        name: String,
        /// The payload as JSON (`-`: read stdin; absent: null).
        json: Option<String>,
    },
    /// Subscribe to TOPICs and print each event as a line of JSON: {"topic":..,"seq":..,"data":..}.
    /// Runs until interrupted, --count events, or --timeout.
    Listen {
        /// The server's WebSocket URL, e.g. ws://localhost:8080/ws or wss://…
        url: String,
        /// One or more topics.
        #[arg(required = true)]
        topics: Vec<String>,
        /// Exit after this many events.
        #[arg(short = 'n', long)]
        count: Option<u64>,
    },
    /// Publish JSON (`-` reads stdin) to TOPIC.
    Publish {
        /// The server's WebSocket URL, e.g. ws://localhost:8080/ws or wss://…
        url: String,
        /// The topic.
        topic: String,
        /// The payload as JSON (`-`: read stdin).
        json: String,
    },
    /// Connect and print each state transition as a line of JSON; exit once ready (or, with --watch, keep
    /// printing until interrupted or --timeout).
    Status {
        /// The server's WebSocket URL, e.g. ws://localhost:8080/ws or wss://…
        url: String,
        /// Keep watching after `ready`.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Args, Debug)]
struct Options {
    /// A header for the upgrade request, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "K:V", global = true)]
    headers: Vec<String>,
    /// Bearer token, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "SOCKEYE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Send the token as `?token=` in the URL instead of the header.
    #[arg(long, global = true)]
    token_in_query: bool,
    /// Give up after this long (e.g. `500ms`, `5s`, `1m`; a bare number is seconds). Default: 30s, none for
    /// `listen` and `status --watch`.
    #[arg(long, value_parser = parse_duration, global = true)]
    timeout: Option<Duration>,
    /// Do not reconnect after a lost connection or a failed attempt.
    #[arg(long, global = true)]
    no_reconnect: bool,
    /// Connection attempts before giving up (0: unlimited). Default: 3, unlimited for `listen` and
    /// `status --watch`.
    #[arg(long, global = true)]
    max_attempts: Option<u32>,
    /// Backoff base delay in milliseconds.
    #[arg(long, default_value_t = 200, global = true)]
    base_delay_ms: u64,
    /// Backoff maximum delay in milliseconds.
    #[arg(long, default_value_t = 5000, global = true)]
    max_delay_ms: u64,
    /// Trust the certificates in this PEM file for wss:// (in addition to the built-in roots).
    #[arg(long, value_name = "PEM", global = true)]
    ca_cert: Option<PathBuf>,
    /// Log to stderr (-v info, -vv debug); RUST_LOG also works.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    fn timeout(what: &str, after: Duration) -> Self {
        Failure {
            code: 4,
            message: format!("timed out after {} while {what}", show(after)),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::Config(_) | Error::InvalidTopic(_) => 2,
            Error::Disconnected(_) | Error::Unavailable { .. } | Error::Closed => 3,
            Error::DeadlineExceeded { .. } => 4,
            Error::Server { .. } => 5,
            _ => 1,
        };
        let mut message = error.to_string();
        if let Error::Server {
            details: Some(details),
            ..
        } = &error
        {
            if let Ok(details) = json::from_payload(Some(details)) {
                message.push_str(&format!(" (details: {details})"));
            }
        }
        Failure { code, message }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.options.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sockeye: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            // The message may quote the server (an `err` message, a close reason).
            eprintln!("sockeye: error: {}", terminal::plain(&message));
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Dependencies log at `debug` at most, whatever RUST_LOG says: their trace output is byte- and frame-level
    // detail that may carry what the upgrade or the payloads hold (tungstenite once logged the whole upgrade
    // request there, credentials included; the client no longer lets it see that request).
    let dependencies_capped = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() != tracing::Level::TRACE || meta.target().starts_with("sockeye")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal: a file or pipe gets plain text, without escape sequences.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .finish()
        .with(dependencies_capped)
        .try_init();
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let Cli { command, options } = cli;
    let default_timeout = Duration::from_secs(30);
    match command {
        Command::Request { url, method, json } => {
            let data = parse_json(json.as_deref())?;
            let timeout = options.timeout.unwrap_or(default_timeout);
            let builder = builder(&url, &options, false)?.request_timeout(timeout);
            bounded(timeout, "waiting for the reply", async {
                let client = builder.connect().await?;
                let reply = client.request::<_, ciborium::Value>(&method, &data).await;
                client.close().await;
                let reply = json::cbor_to_json(&reply?);
                print_line(&reply.to_string())
            })
            .await
        }
        Command::Send { url, name, json } => {
            let data = parse_json(json.as_deref())?;
            let timeout = options.timeout.unwrap_or(default_timeout);
            let builder = builder(&url, &options, false)?;
            bounded(timeout, "sending", async {
                let client = builder.connect().await?;
                let sent = client.send(&name, &data).await;
                client.close().await; // sends what was handed over before the close frame
                Ok(sent?)
            })
            .await
        }
        Command::Publish { url, topic, json } => {
            let data = parse_json(Some(&json))?;
            let timeout = options.timeout.unwrap_or(default_timeout);
            let builder = builder(&url, &options, false)?;
            bounded(timeout, "publishing", async {
                let client = builder.connect().await?;
                let sent = client.publish(&topic, &data).await;
                client.close().await;
                Ok(sent?)
            })
            .await
        }
        Command::Listen { url, topics, count } => {
            let client = builder(&url, &options, true)?.build()?;
            let listening = listen(&client, &topics, count);
            let result = until_interrupted(options.timeout, listening).await;
            client.close().await;
            result.unwrap_or(Ok(()))
        }
        Command::Status { url, watch } => {
            let client = builder(&url, &options, watch)?.build()?;
            let timeout = options.timeout.or((!watch).then_some(default_timeout));
            let result = until_interrupted(timeout, status(&client, watch)).await;
            client.close().await;
            match result {
                Some(result) => result,
                None if watch => Ok(()),
                None => Err(Failure::timeout(
                    "waiting for ready",
                    timeout.unwrap_or(default_timeout),
                )),
            }
        }
    }
}

/// The client options every command shares. `long_running` commands retry forever by default.
fn builder(url: &str, options: &Options, long_running: bool) -> Result<ClientBuilder, Failure> {
    let attempts = options
        .max_attempts
        .unwrap_or(if long_running { 0 } else { 3 });
    let mut builder = Client::builder(url)
        // Half the protocol's 8: at most 64 MiB of partial messages, so that with one whole message being
        // read, decoded and printed as JSON the CLI stays under 256 MB whatever the server sends (issue 13).
        .max_partial_messages(4)
        .reconnect(!options.no_reconnect)
        .max_attempts((attempts > 0).then_some(attempts))
        .base_delay(Duration::from_millis(options.base_delay_ms))
        .max_delay(Duration::from_millis(options.max_delay_ms));
    for header in &options.headers {
        let Some((name, value)) = header.split_once(':') else {
            return Err(Failure::usage(format!(
                "--header needs `Name: value`, got {:?}",
                header_name(header)
            )));
        };
        builder = builder.header(name.trim(), value.trim());
    }
    if let Some(token) = &options.token {
        builder = builder
            .token(token.clone())
            .token_in_query(options.token_in_query);
    }
    if let Some(path) = &options.ca_cert {
        let pem = std::fs::read(path).map_err(|e| {
            Failure::usage(format!("cannot read --ca-cert {}: {e}", path.display()))
        })?;
        for certificate in Certificate::from_pem_bundle(&pem)
            .map_err(|e| Failure::usage(format!("--ca-cert {}: {e}", path.display())))?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder)
}

/// A header argument's name only: values may be credentials and are never echoed.
fn header_name(header: &str) -> &str {
    header.split([':', '=']).next().unwrap_or_default()
}

async fn listen(client: &Client, topics: &[String], count: Option<u64>) -> Result<(), Failure> {
    let mut streams = futures_util::stream::SelectAll::new();
    for topic in topics {
        streams.push(client.subscribe::<ciborium::Value>(topic)?);
    }
    // Stop on a terminal disconnect (auth failure, attempts exhausted) instead of waiting forever.
    let mut transitions = client.transitions();
    let gave_up = async move {
        while let Some(transition) = transitions.next().await {
            if let Ok(Transition {
                to:
                    Status::Disconnected {
                        reason: Some(reason),
                    },
                ..
            }) = transition
            {
                return Error::Disconnected(reason);
            }
        }
        Error::Closed
    };
    tokio::pin!(gave_up);
    let mut printed = 0u64;
    while count.is_none_or(|n| printed < n) {
        tokio::select! {
            event = streams.next() => match event {
                Some(Ok(TopicEvent { topic, seq, data, .. })) => {
                    let line = json!({ "topic": topic, "seq": seq, "data": json::cbor_to_json(&data) });
                    drop(data); // a message can be 16 MiB: one copy fewer while the line is written out
                    print_line(&line.to_string())?;
                    printed += 1;
                }
                Some(Err(Error::Lagged { skipped })) => eprintln!("sockeye: warning: {skipped} events dropped (output too slow)"),
                Some(Err(e @ Error::Payload(_))) => eprintln!("sockeye: warning: {}", terminal::plain(&e.to_string())),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            error = &mut gave_up => return Err(error.into()),
        }
    }
    Ok(())
}

async fn status(client: &Client, watch: bool) -> Result<(), Failure> {
    let mut transitions = client.transitions();
    while let Some(transition) = transitions.next().await {
        let Ok(transition) = transition else { continue };
        let mut line = json!({
            "at_ms": transition.at.as_millis(),
            "from": transition.from.name(),
            "to": transition.to.name(),
        });
        match &transition.to {
            Status::Connecting { attempt } | Status::Connected { attempt } => {
                line["attempt"] = json!(attempt)
            }
            Status::Reconnecting { attempt, delay, .. } => {
                line["attempt"] = json!(attempt);
                line["delay_ms"] = json!(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            }
            Status::Disconnected {
                reason: Some(reason),
            } => {
                line["reason"] = json!(reason.as_str());
                line["detail"] = json!(reason.to_string());
            }
            _ => {}
        }
        print_line(&line.to_string())?;
        match transition.to {
            Status::Ready if !watch => return Ok(()),
            Status::Disconnected {
                reason: Some(reason),
            } => return Err(Error::Disconnected(reason).into()),
            _ => {}
        }
    }
    Ok(())
}

/// Runs `f` until it ends, Ctrl-C (`None`), or `timeout` (`None`).
async fn until_interrupted<T>(
    timeout: Option<Duration>,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        output = f => Some(output),
        _ = tokio::signal::ctrl_c() => None,
        () = deadline => None,
    }
}

async fn bounded(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<(), Failure>>,
) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, f).await {
        Ok(result) => result,
        Err(_) => Err(Failure::timeout(what, timeout)),
    }
}

fn parse_json(text: Option<&str>) -> Result<Json, Failure> {
    let text = match text {
        None => return Ok(Json::Null),
        Some("-") => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
            input
        }
        Some(text) => text.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| Failure::usage(format!("invalid JSON: {e}")))
}

/// Prints one line of JSON (every line on stdout is one).
fn print_line(line: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", terminal::json(line))
        .and_then(|()| out.flush())
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot write to stdout: {e}"),
        })
}

/// `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds (fractions allowed).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 500ms, 5s, 1m)"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("not a duration: {e}"))
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn header_values_are_never_echoed_in_errors() {
        assert_eq!(header_name("Authorization=Bearer secret"), "Authorization");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
