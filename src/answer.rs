//! The answer to an HTTP request: which response a route gets (the web page, the help text,
//! an error, or the head of `/stream`, whose body the send loop writes), and sending it.

use crate::addr::Peer;
use crate::file_id::FileId;
use crate::header::Start;
use crate::http::{self, Route};
use crate::shard::{Connection, Shard};
use crate::state::Phase;
use crate::stats::Rejection;
use crate::sys;
use crate::web;
use std::io;
use tracing::{debug, warn};

/// What to send for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// `/stream`: the file from `start` on, or with `head_only` just the head saying where.
    Stream { start: Start, head_only: bool },
    /// A complete response with its status; the connection closes after it.
    Complete { status: u16, response: String },
}

/// What a request gets: `host` is the `Host` it named (for the help text), `html` whether it
/// accepts HTML (a browser, which gets `page` at `/`).
pub fn answer(route: Route, host: Option<&str>, html: bool, page: &str) -> Answer {
    let (status, response) = match route {
        Route::Stream { start, head_only } => return Answer::Stream { start, head_only },
        Route::Index { head_only } if html => (200, web::response(page, head_only)),
        Route::Index { head_only } => (
            200,
            http::reply(
                "200 OK",
                http::PLAIN_TEXT,
                &[("Vary", "Accept")],
                &http::help(host),
                head_only,
            ),
        ),
        Route::NotFound { head_only } => (
            404,
            http::reply(
                "404 Not Found",
                http::PLAIN_TEXT,
                &[],
                "no such path: try /stream, or / for help\n",
                head_only,
            ),
        ),
        Route::BadMethod => (
            405,
            http::reply(
                "405 Method Not Allowed",
                http::PLAIN_TEXT,
                &[("Allow", http::ALLOW)],
                "only GET and HEAD\n",
                false,
            ),
        ),
        Route::BadRequest(why) => (
            400,
            http::reply(
                "400 Bad Request",
                http::PLAIN_TEXT,
                &[],
                &format!("{why}\n"),
                false,
            ),
        ),
    };
    Answer::Complete { status, response }
}

/// Sends a complete response, counting it (and an error status as a refused client).
pub async fn send_complete(
    shard: &Shard,
    conn: &Connection,
    peer: Peer,
    status: u16,
    response: &str,
) {
    shard.stats.responded(status);
    if status >= 400 {
        shard.stats.reject(Rejection::BadHeader);
        warn!(shard = shard.index, client = conn.id(), %peer, status, "refused HTTP request; closing connection");
    }
    if let Err(e) = send_all(shard, conn, response.as_bytes()).await {
        debug!(shard = shard.index, client = conn.id(), %peer, error = %e, "sending the response");
    }
}

/// Sends the head of `/stream` for a start `resolved` to an offset in a file of `size` bytes
/// (a 500 if it could not be); the offset if the body is to follow, `None` when the response
/// is complete (HEAD, an error) or could not be sent: the caller closes.
pub async fn begin_stream(
    shard: &Shard,
    conn: &Connection,
    peer: Peer,
    resolved: Option<u64>,
    size: u64,
    file: Option<FileId>,
    head_only: bool,
) -> Option<u64> {
    let Some(offset) = resolved else {
        shard.stats.responded(500);
        let response = http::reply(
            "500 Internal Server Error",
            http::PLAIN_TEXT,
            &[],
            "cannot read the file\n",
            head_only,
        );
        let _ = send_all(shard, conn, response.as_bytes()).await;
        return None;
    };
    let head = http::stream_head(offset, size, file);
    shard.stats.responded(200);
    if let Err(e) = send_all(shard, conn, head.as_bytes()).await {
        debug!(shard = shard.index, client = conn.id(), %peer, error = %e, "sending the response head");
        return None;
    }
    (!head_only).then_some(offset)
}

/// Sends all of `bytes`, waiting for room as a stream does; fails if the client fails or the
/// server closes first.
async fn send_all(shard: &Shard, conn: &Connection, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match sys::send_now(conn.socket(), bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if shard.phase() >= Phase::Closing {
                    return Err(io::Error::other("server closing"));
                }
                conn.until_room(None).await;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(route: Route, host: Option<&str>, html: bool) -> (u16, String) {
        match answer(route, host, html, "<p>page</p>") {
            Answer::Complete { status, response } => (status, response),
            other => panic!("expected a complete response, got {other:?}"),
        }
    }

    #[test]
    fn each_route_gets_its_answer() {
        let start = Start::Lines(10);
        for head_only in [false, true] {
            assert_eq!(
                answer(Route::Stream { start, head_only }, None, true, ""),
                Answer::Stream { start, head_only }
            );
        }
        let (status, page) = complete(Route::Index { head_only: false }, None, true);
        assert_eq!(status, 200);
        assert!(
            page.contains("text/html") && page.ends_with("<p>page</p>"),
            "{page:?}"
        );
        let (status, help) = complete(Route::Index { head_only: false }, Some("h:1"), false);
        assert_eq!(status, 200);
        assert!(help.contains("\r\nVary: Accept\r\n"), "{help:?}");
        assert!(help.contains("curl -N http://h:1/stream\n"), "{help:?}");
        let (status, head) = complete(Route::Index { head_only: true }, Some("h:1"), false);
        assert_eq!(status, 200);
        assert!(head.ends_with("\r\n\r\n"), "{head:?}");
        let (status, missing) = complete(Route::NotFound { head_only: false }, None, false);
        assert_eq!(status, 404);
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing:?}"
        );
        let (status, refused) = complete(Route::BadMethod, None, false);
        assert_eq!(status, 405);
        assert!(refused.contains("\r\nAllow: GET, HEAD\r\n"), "{refused:?}");
        let (status, bad) = complete(Route::BadRequest("why not".into()), None, false);
        assert_eq!(status, 400);
        assert!(bad.ends_with("\r\n\r\nwhy not\n"), "{bad:?}");
    }
}
