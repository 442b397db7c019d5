//! `members`, `owners`, `events`: a node's debug endpoint, from a shell.

use std::time::Duration;

use bytes::Bytes;
use gossip_election::debug::{EventView, MemberView, OwnersView};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::{Exit, LookArgs};

/// How long connecting (and, but for `events`, the whole answer) may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// `GET /v1/members`.
    Members,
    /// `GET /v1/owners`.
    Owners,
    /// `GET /v1/events`, followed.
    Events,
}

/// Prints what the node at `args.debug_addr` shows.
pub async fn look(what: Look, args: LookArgs) -> Exit {
    let result = match what {
        Look::Members => once(&args, "/v1/members", members_table).await,
        Look::Owners => once(&args, "/v1/owners", owners_table).await,
        Look::Events => follow(&args).await,
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("gossip-election: {}: {}", args.debug_addr, failure.message);
            }
            failure.exit
        }
    }
}

struct Failure {
    exit: Exit,
    message: String,
}

fn unreachable(message: impl std::fmt::Display) -> Failure {
    Failure {
        exit: Exit::Unreachable,
        message: message.to_string(),
    }
}

fn bad_answer(message: impl std::fmt::Display) -> Failure {
    Failure {
        exit: Exit::BadAnswer,
        message: message.to_string(),
    }
}

/// Writes `text` and a newline to stdout; a reader that went away (`| head -1`) ends the
/// command quietly.
fn emit(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure {
            exit: Exit::Ok,
            message: String::new(),
        }),
        Err(err) => Err(Failure {
            exit: Exit::Internal,
            message: format!("cannot write to stdout: {err}"),
        }),
    }
}

/// `GET path`, and the response's body once the status is 200.
async fn get(addr: &str, path: &str) -> Result<Incoming, Failure> {
    let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|err| unreachable(format!("cannot connect: {err}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| unreachable(format!("HTTP handshake failed: {err}")))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|err| bad_answer(format!("cannot build the request: {err}")))?;
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|err| unreachable(format!("request failed: {err}")))?;
    if response.status() != hyper::StatusCode::OK {
        return Err(bad_answer(format!(
            "GET {path} answered {}: is this a gossip-election debug endpoint?",
            response.status()
        )));
    }
    Ok(response.into_body())
}

async fn once<T: serde::de::DeserializeOwned>(
    args: &LookArgs,
    path: &str,
    table: fn(&[T]) -> Vec<Vec<String>>,
) -> Result<(), Failure> {
    let body = get(&args.debug_addr, path).await?;
    let bytes = tokio::time::timeout(TIMEOUT, body.collect())
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|err| unreachable(format!("reading the answer failed: {err}")))?
        .to_bytes();
    let rows: Vec<T> = serde_json::from_slice(&bytes)
        .map_err(|err| bad_answer(format!("GET {path} is not what a node serves: {err}")))?;
    if args.json {
        emit(&String::from_utf8_lossy(&bytes))
    } else {
        emit(render(&table(&rows)).trim_end())
    }
}

fn members_table(members: &[MemberView]) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "NAME",
        "ADDR",
        "STATE",
        "BOOT",
        "INCARNATION",
        "VIEW",
        "VIEW AGE",
    ])];
    for m in members {
        rows.push(vec![
            m.name.clone().unwrap_or_else(|| "?".into()),
            m.addr.to_string(),
            m.state.clone(),
            m.boot.to_string(),
            m.incarnation.to_string(),
            m.view_digest.clone().unwrap_or_else(|| "-".into()),
            m.digest_age_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
        ]);
    }
    rows
}

fn owners_table(owners: &[OwnersView]) -> Vec<Vec<String>> {
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(",")
        }
    };
    let mut rows = vec![header(&[
        "RESOURCE",
        "TICKETS",
        "TERM",
        "OWNERS",
        "DESIRED",
        "CANDIDATES",
        "HELD HERE",
    ])];
    for o in owners {
        rows.push(vec![
            o.resource.clone(),
            o.tickets.to_string(),
            o.term.to_string(),
            list(&o.owners),
            list(&o.desired),
            list(&o.candidates),
            match o.held_for_ms {
                Some(ms) if o.held_here => format!("yes, {ms} ms"),
                _ if o.held_here => "yes".into(),
                _ => "no".into(),
            },
        ]);
    }
    rows
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Columns padded to their widest cell, two spaces apart.
fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < row.len() {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Follows the server-sent events until the stream ends (which is a failure: a node
/// keeps it open while it runs).
async fn follow(args: &LookArgs) -> Result<(), Failure> {
    let mut body = get(&args.debug_addr, "/v1/events").await?;
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| unreachable(format!("the event stream broke: {err}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = find(&pending, b"\n\n") {
            let block: Vec<u8> = pending.drain(..end + 2).collect();
            if let Some(json) = sse_data(&block) {
                let event: EventView = serde_json::from_str(&json).map_err(|err| {
                    bad_answer(format!("an event is not what a node sends: {err}"))
                })?;
                if args.json {
                    emit(&json)?;
                } else {
                    emit(&event_line(&event))?;
                }
            }
        }
    }
    Err(unreachable("the node closed the event stream"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `data:` lines of one server-sent event, joined; `None` for a comment (keep-alive).
fn sse_data(block: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(block);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// `2026-12-04T12:00:00.123Z  down      w2@127.0.0.1:7402`
fn event_line(event: &EventView) -> String {
    // RFC 3339 ends at the year 9999: later (a clock gone wrong) shows the number.
    let at = if event.unix_ms < 253_402_300_800_000 {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(event.unix_ms),
        )
        .to_string()
    } else {
        format!("unix_ms={}", event.unix_ms)
    };
    let mut line = format!("{at}  {:<9}", event.kind);
    for part in [&event.member, &event.resource, &event.reason]
        .into_iter()
        .flatten()
    {
        line.push_str("  ");
        line.push_str(part);
    }
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let rows = vec![
            header(&["NAME", "STATE"]),
            vec!["w1".into(), "alive".into()],
            vec!["worker-22".into(), "down".into()],
        ];
        assert_eq!(
            render(&rows),
            "NAME       STATE\nw1         alive\nworker-22  down\n"
        );
    }

    #[test]
    fn server_sent_events_yield_their_data_and_skip_keep_alives() {
        assert_eq!(
            sse_data(b"event: down\ndata: {\"a\":1}\n\n").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(sse_data(b":\n\n"), None);
    }
}
