//! HTTP on the streaming port, from tests: send a request, read and parse the response head
//! (with httparse), then read the body as any client's bytes.

use super::*;

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct HttpHead {
    pub status: u16,
    pub fields: Vec<(String, String)>,
}

impl HttpHead {
    /// The value of the field `name` (case-insensitive), if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The numeric value of a field that must be present.
    #[track_caller]
    pub fn number(&self, name: &str) -> u64 {
        self.field(name)
            .unwrap_or_else(|| panic!("no {name} in {self:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("{name} in {self:?}: {e}"))
    }
}

impl Client {
    /// Connects and sends `METHOD target HTTP/1.1` with a Host field.
    #[track_caller]
    pub fn http(port: u16, method: &str, target: &str) -> Client {
        let mut client = Client::connect(port);
        client.send(format!("{method} {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        client
    }

    /// A GET of `target` and its response head; the body is left to read.
    #[track_caller]
    pub fn get(port: u16, target: &str) -> (Client, HttpHead) {
        let mut client = Client::http(port, "GET", target);
        let head = client.read_http_head(PATIENCE);
        (client, head)
    }

    /// Reads a response head (a byte at a time, so the body stays unread) within `timeout`.
    #[track_caller]
    pub fn read_http_head(&mut self, timeout: Duration) -> HttpHead {
        let deadline = std::time::Instant::now() + timeout;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(head.len() < 16 << 10, "response head too long: {head:?}");
            head.extend(self.read_exactly(1, left.max(Duration::from_millis(1))));
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let parsed = response.parse(&head).unwrap_or_else(|e| {
            panic!(
                "bad response head {:?}: {e}",
                String::from_utf8_lossy(&head)
            )
        });
        assert!(parsed.is_complete());
        HttpHead {
            status: response.code.expect("a status"),
            fields: response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8(h.value.to_vec()).expect("an ASCII field value"),
                    )
                })
                .collect(),
        }
    }

    /// Reads a complete response with a Content-Length: head and body, then the close.
    #[track_caller]
    pub fn read_http_response(&mut self, timeout: Duration) -> (HttpHead, String) {
        let head = self.read_http_head(timeout);
        let length = head.number("Content-Length") as usize;
        let body = self.read_exactly(length, timeout);
        let (rest, _) = self.read_to_end(timeout);
        assert!(rest.is_empty(), "bytes after the body: {rest:?}");
        (head, String::from_utf8(body).expect("a UTF-8 body"))
    }
}
