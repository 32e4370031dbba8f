//! A real browser for the web-page tests: headless Chromium driven through chromedriver's
//! W3C WebDriver HTTP API by a small client written here (std::net and serde_json).
//!
//! Why not a WebDriver crate? The ones there are (fantoccini, thirtyfour) bring tokio and
//! hyper with them, dozens of crates for a handful of JSON requests to a local process;
//! the protocol is plain HTTP/1.1 with JSON bodies, which a page of code speaks.
//!
//! Browsers are found on PATH (`chromedriver`, `chromium`), or at `TAILSRV_CHROMEDRIVER` and
//! `TAILSRV_CHROMIUM`. Without them a test prints a SKIP line and passes, unless `CI=true`,
//! where it fails: CI (`.ci/run`) installs Debian's `chromium` and `chromium-driver`.

use super::*;
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One browser at a time. Why? A test checks that a line shows within a second; several
/// Chromiums at once on a shared 2-core machine would measure each other, not the page.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What WebDriver calls the key `End` and `Home` (the W3C spec's code points for them).
pub const KEY_END: &str = "\u{E010}";
pub const KEY_HOME: &str = "\u{E011}";

/// A headless Chromium with a WebDriver session; both are ended on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: TempDir,
    _turn: MutexGuard<'static, ()>,
}

/// Finds `name` on PATH, or at the path in `env` if that is set.
fn find_program(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a fresh profile, or, with no
    /// browser installed, notes that the calling test is skipped and returns `None` (and
    /// fails under `CI=true`).
    #[track_caller]
    pub fn start() -> Option<Browser> {
        // The test harness names each test's thread after the test.
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("a browser test");
        let (Some(driver), Some(chromium)) = (
            find_program("TAILSRV_CHROMEDRIVER", "chromedriver"),
            find_program("TAILSRV_CHROMIUM", "chromium"),
        ) else {
            let why = "no chromium and chromedriver here (Debian: apt-get install chromium \
                       chromium-driver)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: CI=true, and {why}: .ci/run installs them");
            }
            skip(why);
            return None;
        };
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = Command::new(&driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let port = driver_port(&mut child)
            .unwrap_or_else(|| panic!("{} did not say which port it listens on", driver.display()));
        let profile = TempDir::new();
        let mut browser = Browser {
            driver: child,
            port,
            session: String::new(),
            _profile: profile,
            _turn: turn,
        };
        // Why these flags? Root needs --no-sandbox; a fresh profile and no background
        // networking, component updates, sync or QUIC keep a browser on a machine without
        // network from piling up connections that never succeed.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1000,700",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let reply = browser.call("POST", "/session", Some(&caps));
        browser.session = reply["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {reply}"))
            .to_string();
        Some(browser)
    }

    /// Sends one WebDriver command and returns its `value`; panics with the error otherwise.
    #[track_caller]
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        match self.try_call(method, path, body) {
            Ok(value) => value,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    fn try_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("connecting to chromedriver: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json; \
             charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .map_err(|e| format!("sending: {e}"))?;
        let (status, reply) = read_response(&mut stream).map_err(|e| format!("reading: {e}"))?;
        let json: Value = serde_json::from_slice(&reply).map_err(|e| {
            format!(
                "status {status}, body not JSON ({e}): {}",
                String::from_utf8_lossy(&reply)
            )
        })?;
        if status != 200 {
            return Err(format!("status {status}: {}", json["value"]));
        }
        Ok(json["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for it to load.
    #[track_caller]
    pub fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(&json!({"url": url})),
        );
    }

    /// Runs `body` (a function body: `return ...;`, the arguments in `arguments`) in the page.
    #[track_caller]
    pub fn script(&self, body: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(&json!({"script": body, "args": args})),
        )
    }

    /// Evaluates `expr` in the page until it is truthy and returns it; fails after
    /// `timeout`, saying what was awaited and what the page shows.
    #[track_caller]
    pub fn wait_for(&self, what: &str, timeout: Duration, expr: &str) -> Value {
        let deadline = Instant::now() + timeout;
        let body = format!("return ({expr});");
        loop {
            let value = self.script(&body, json!([]));
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for {what}; the page: {}",
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the page shows, for failure messages: state, line count, the last lines.
    pub fn describe(&self) -> String {
        let js = r##"
            const lines = [...document.querySelectorAll("#log > div")];
            return JSON.stringify({
                state: document.getElementById("state")?.textContent,
                error: document.getElementById("error")?.textContent,
                jump: document.getElementById("jump")?.hidden === false
                    ? document.getElementById("jump").textContent : null,
                lines: lines.length,
                last: lines.slice(-5).map((d) => d.className + ": " + d.textContent),
            });"##;
        match self.try_call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(&json!({"script": js, "args": []})),
        ) {
            Ok(v) => v.as_str().unwrap_or_default().to_string(),
            Err(e) => format!("(could not ask: {e})"),
        }
    }

    /// The WebDriver reference of the element `css` selects.
    #[track_caller]
    fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            &self.session_path("/element"),
            Some(&json!({"using": "css selector", "value": css})),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// Clicks the element `css` selects, as a mouse would.
    #[track_caller]
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{id}/click")),
            Some(&json!({})),
        );
    }

    /// Types `keys` into the element `css` selects (focusing it first), as a keyboard would;
    /// `KEY_END` and friends are keys.
    #[track_caller]
    pub fn type_into(&self, css: &str, keys: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{id}/value")),
            Some(&json!({"text": keys})),
        );
    }

    /// Sets the browser window's size in CSS pixels.
    #[track_caller]
    pub fn window_size(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.session_path("/window/rect"),
            Some(&json!({"width": width, "height": height})),
        );
    }

    /// Makes the page see `prefers-color-scheme: dark` (or light), through the DevTools
    /// protocol command chromedriver passes on.
    #[track_caller]
    pub fn color_scheme(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        self.call(
            "POST",
            &self.session_path("/goog/cdp/execute"),
            Some(&json!({
                "cmd": "Emulation.setEmulatedMedia",
                "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
            })),
        );
    }

    /// Saves a PNG of what the page shows now to `path`.
    #[track_caller]
    pub fn screenshot(&self, path: &Path) {
        let png = self.call("GET", &self.session_path("/screenshot"), None);
        let bytes = base64_decode(png.as_str().expect("a base64 string"));
        assert!(bytes.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium and reap it; killing the
        // driver first would leave the browser running on its own.
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &self.session_path(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads chromedriver's "started successfully on port N" line from its stdout, then keeps
/// draining its output on a thread so it never blocks writing.
fn driver_port(child: &mut Child) -> Option<u16> {
    let mut out = BufReader::new(child.stdout.take()?);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(rest) = line.trim_end().split(" on port ").nth(1) {
            if line.contains("started successfully") {
                let port = rest.trim_end_matches('.').parse().ok()?;
                std::thread::spawn(move || io::copy(&mut out, &mut io::sink()));
                return Some(port);
            }
        }
    }
    None
}

/// Reads one HTTP/1.1 response with a Content-Length (all chromedriver sends).
fn read_response(stream: &mut TcpStream) -> io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {head}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| bad("no Content-Length"))?;
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((status, body))
}

/// Decodes standard base64 (WebDriver's screenshots); panics on anything else.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

#[test]
fn base64_decodes_every_padding() {
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("aGkh"), b"hi!");
    assert_eq!(base64_decode("aA=="), b"h");
    assert_eq!(base64_decode(""), b"");
}
