//! Server-Sent Events: how a server-streaming method reaches a REST client. Each upstream
//! message becomes one `message` event whose data is the message's JSON, numbered by an `id`
//! line; a failure after the first message, the stream's time limit or the edge's shutdown
//! becomes a final `error` event carrying the `google.rpc.Status` JSON; a comment keeps an idle
//! stream open through intermediaries. The REST pipeline opens the call and answers failures
//! before the first message as JSON; [`serve`] writes everything from the first message on.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use prost_reflect::DynamicMessage;
use shopmesh_kit::Shutdown;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::reply::Reply;
use crate::routes::Route;
use crate::transcode::{response_json, status_json};
use crate::upstream;

/// How long a stream may stay silent before the edge sends a keep-alive comment: well below
/// the idle timeouts of common proxies and load balancers (often 30 to 60 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The media type of a stream of events.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// A comment line: clients ignore it, intermediaries see traffic.
const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// A server-streaming call that has produced its first message, or ended without one.
pub struct Opened {
    pub first: Option<DynamicMessage>,
    /// The rest of the call; dropping it cancels the call upstream.
    pub rest: Streaming<DynamicMessage>,
    /// When the stream must end: `stream_timeout` after it opened, or the client's own deadline.
    pub ends_at: Instant,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The service ended the stream.
    Completed,
    /// The service failed after the first message; an `error` event said how.
    Failed,
    /// The stream reached its time limit; an `error` event said so.
    TimeLimit,
    /// The edge is shutting down; an `error` event said so.
    Shutdown,
    /// The client went away or stopped reading; the call upstream was dropped.
    ClientGone,
}

impl End {
    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::TimeLimit => "time_limit",
            Self::Shutdown => "shutdown",
            Self::ClientGone => "client_gone",
        }
    }
}

/// The answer that starts a stream of events, before the gateway's header policies (CORS, HSTS);
/// [`serve`] writes its head and frames its body.
pub(crate) fn answer() -> Reply {
    Reply {
        status: 200,
        headers: vec![
            (header::CONTENT_TYPE, CONTENT_TYPE.into()),
            (header::CACHE_CONTROL, "no-cache".into()),
            // nginx, and proxies that honour it, would otherwise buffer the stream.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                "no".into(),
            ),
        ],
        body: Bytes::new(),
    }
}

/// What a stream is waiting for between two writes.
enum Next {
    Message(Result<Option<DynamicMessage>, Status>),
    KeepAlive,
    TimeLimit,
    Shutdown,
    ClientGone,
}

/// Writes `head` and then the stream's events to the client until the service ends the
/// stream, it fails, its time runs out, the edge shuts down or the client goes away. Returns
/// how it ended and how many `message` events were sent. A write the client does not take
/// within the session's write timeout counts as the client going away.
pub async fn serve(
    session: &mut Session,
    mut head: ResponseHeader,
    route: &Route,
    opened: Opened,
    keep_alive: Duration,
    shutdown: &Shutdown,
) -> (End, u64) {
    let label = route.template.to_string();
    metrics::counter!("shopmesh_edge_streams_opened_total", "route" => label.clone()).increment(1);
    let Opened {
        first,
        mut rest,
        ends_at,
    } = opened;
    let mut sent = 0;
    // When the next keep-alive comment is due: `keep_alive` after the last write.
    let mut quiet_until;
    // No length: HTTP/1.1 sends the body chunked, HTTP/2 in data frames, and an HTTP/1.0
    // client reads until the connection closes.
    if !session.is_http2() {
        let chunked = session.req_header().version == http::Version::HTTP_11
            && head
                .insert_header(header::TRANSFER_ENCODING, "chunked")
                .is_ok();
        if !chunked {
            session.set_keepalive(None);
        }
    }
    // The head goes out with the first event (HTTP/1.1 flushes on each chunk).
    let mut next = match session.write_response_header(Box::new(head), false).await {
        Ok(()) => Next::Message(Ok(first)),
        Err(_) => Next::ClientGone,
    };
    let end = loop {
        match next {
            Next::Message(Ok(Some(message))) => {
                let json = match response_json(route, &message) {
                    Ok(json) => json,
                    Err(status) => break fail(session, &label, End::Failed, &status).await,
                };
                sent += 1;
                let event = message_event(sent, &json);
                if !write(session, event, false).await {
                    break End::ClientGone;
                }
                metrics::counter!("shopmesh_edge_stream_events_total", "route" => label.clone(), "event" => "message")
                    .increment(1);
                quiet_until = Instant::now() + keep_alive;
            }
            Next::Message(Ok(None)) => {
                let ended = write(session, Bytes::new(), true).await;
                break if ended {
                    End::Completed
                } else {
                    End::ClientGone
                };
            }
            Next::KeepAlive => {
                if !write(session, Bytes::from_static(KEEP_ALIVE_COMMENT), false).await {
                    break End::ClientGone;
                }
                quiet_until = Instant::now() + keep_alive;
            }
            Next::ClientGone => break End::ClientGone,
            Next::Message(Err(status)) => {
                let status = upstream::failure(route, status);
                break fail(session, &label, End::Failed, &status).await;
            }
            Next::TimeLimit => {
                let status =
                    Status::deadline_exceeded("the stream reached its time limit; reconnect");
                break fail(session, &label, End::TimeLimit, &status).await;
            }
            Next::Shutdown => {
                let status = Status::unavailable("the edge is shutting down; reconnect");
                break fail(session, &label, End::Shutdown, &status).await;
            }
        }
        // Shutdown and the time limit first: a busy stream still ends on time.
        next = tokio::select! {
            biased;
            () = shutdown.wait() => Next::Shutdown,
            () = tokio::time::sleep_until(ends_at) => Next::TimeLimit,
            // Resolves only when the client closes (FIN, RST_STREAM) or sends bytes it should not.
            _ = session.read_body_or_idle(true) => Next::ClientGone,
            message = rest.message() => Next::Message(message),
            () = tokio::time::sleep_until(quiet_until) => Next::KeepAlive,
        };
    };
    // Cancels the call upstream if it is still running.
    drop(rest);
    if matches!(end, End::ClientGone | End::Shutdown) {
        // Do not reuse the connection: it is broken, or the edge is draining.
        session.set_keepalive(None);
    }
    metrics::counter!("shopmesh_edge_streams_ended_total", "route" => label, "end" => end.as_str())
        .increment(1);
    (end, sent)
}

/// Ends the stream with an `error` event carrying `status`; `how` it ended, unless the client
/// was gone.
async fn fail(session: &mut Session, label: &str, how: End, status: &Status) -> End {
    if !write(session, error_event(&status_json(status)), true).await {
        return End::ClientGone;
    }
    metrics::counter!("shopmesh_edge_stream_events_total", "route" => label.to_owned(), "event" => "error")
        .increment(1);
    how
}

/// Writes `data` (and ends the body with `last`); `false` when the client is gone.
async fn write(session: &mut Session, data: Bytes, last: bool) -> bool {
    let data = (!data.is_empty()).then_some(data);
    session.write_response_body(data, last).await.is_ok()
}

/// The `message` event numbered `id` carrying `data`.
pub fn message_event(id: u64, data: &[u8]) -> Bytes {
    frame("message", Some(id), data)
}

/// The final `error` event carrying `data`.
pub fn error_event(data: &[u8]) -> Bytes {
    frame("error", None, data)
}

/// One event: its `id`, its name and one `data:` line per line of `data`, then the blank line
/// that ends it. Lines end at CR LF, LF or CR, as SSE parsers split them, so no byte of `data`
/// can end the event early or start a field of its own.
fn frame(event: &str, id: Option<u64>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + event.len() + 32);
    if let Some(id) = id {
        out.put_slice(format!("id: {id}\n").as_bytes());
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    for line in lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// `data` split at CR LF, LF and CR. Text ending in a line end has an empty last line, so the
/// client's reassembly (lines joined with LF) gives the text back.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let (mut start, mut at) = (0, 0);
    while at < data.len() {
        match data[at] {
            b'\n' => {
                lines.push(&data[start..at]);
                at += 1;
                start = at;
            }
            b'\r' => {
                lines.push(&data[start..at]);
                at += if data.get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = at;
            }
            _ => at += 1,
        }
    }
    lines.push(&data[start..]);
    lines
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One parsed event, as the EventSource processing model in the HTML standard reads it.
    #[derive(Debug, Default, PartialEq)]
    struct Event {
        id: Option<String>,
        event: String,
        data: String,
    }

    /// Parses a stream the way a browser does: lines end at CR LF, LF or CR; a blank line
    /// dispatches; a line starting with `:` is a comment; one space after the colon is dropped;
    /// data lines are joined with LF.
    fn parse(stream: &str) -> Vec<Event> {
        let mut events = Vec::new();
        let mut current = Event::default();
        let mut data: Option<String> = None;
        let normalised = stream.replace("\r\n", "\n").replace('\r', "\n");
        for line in normalised.split('\n') {
            if line.is_empty() {
                if let Some(data) = data.take() {
                    current.data = data;
                    events.push(std::mem::take(&mut current));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => current.id = Some(value.to_owned()),
                "event" => current.event = value.to_owned(),
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        events
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_message_is_an_id_a_name_and_one_data_line() {
        let event = message_event(3, br#"{"order":{"id":"a"}}"#);
        assert_eq!(
            text(&event),
            "id: 3\nevent: message\ndata: {\"order\":{\"id\":\"a\"}}\n\n"
        );
    }

    #[test]
    fn an_error_has_no_id() {
        let event = error_event(br#"{"code":5,"message":"no such order","details":[]}"#);
        assert_eq!(
            text(&event),
            "event: error\ndata: {\"code\":5,\"message\":\"no such order\",\"details\":[]}\n\n"
        );
    }

    #[test]
    fn line_ends_in_data_become_separate_data_lines() {
        let event = message_event(1, b"{\n  \"a\": 1\r\n}\rx\n");
        assert_eq!(
            text(&event),
            "id: 1\nevent: message\ndata: {\ndata:   \"a\": 1\ndata: }\ndata: x\ndata: \n\n"
        );
        // Nothing in the data starts a field or ends the event early.
        let parsed = parse(text(&event));
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].data, "{\n  \"a\": 1\n}\nx\n");
        assert_eq!(parsed[0].event, "message");
    }

    #[test]
    fn a_stream_of_events_and_comments_parses_in_order() {
        let mut stream = Vec::new();
        for id in 1..=3 {
            stream.extend_from_slice(&message_event(id, format!("{{\"n\":{id}}}").as_bytes()));
            stream.extend_from_slice(KEEP_ALIVE_COMMENT);
        }
        stream.extend_from_slice(&error_event(b"{\"code\":14}"));
        let parsed = parse(text(&stream));
        let ids: Vec<_> = parsed.iter().map(|e| e.id.clone()).collect();
        assert_eq!(
            ids,
            [Some("1".into()), Some("2".into()), Some("3".into()), None]
        );
        assert_eq!(parsed[2].data, "{\"n\":3}");
        assert_eq!(parsed[3].event, "error");
    }

    proptest! {
        /// Any text survives framing, with its line ends as a client sees them (LF).
        #[test]
        fn any_data_round_trips(data in "(?s).{0,200}", id in 1u64..1_000_000) {
            let event = message_event(id, data.as_bytes());
            let parsed = parse(text(&event));
            prop_assert_eq!(parsed.len(), 1);
            prop_assert_eq!(&parsed[0].data, &data.replace("\r\n", "\n").replace('\r', "\n"));
            prop_assert_eq!(parsed[0].id.clone(), Some(id.to_string()));
        }
    }
}
