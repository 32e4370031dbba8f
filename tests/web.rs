//! The web page at `/`, in a real browser: headless Chromium driven through WebDriver
//! (`common::Browser`), used the way a person uses it: open, read, scroll, filter, and watch
//! it ride out a server restart and a replaced file.
//!
//! Without Chromium and chromedriver these tests print a SKIP line and pass, except under
//! `CI=true`, where they fail (`.ci/run` installs both).

use crate::common::*;
use serde_json::json;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The most lines the page keeps (`CAP` in src/web/index.html).
const CAP: usize = 10_000;

/// The most lines the page draws in one animation frame (`BATCH` there).
const BATCH: usize = 2000;

/// How soon an appended line must show (the issue's "within 1 s").
const SHOWN_WITHIN: Duration = Duration::from_secs(1);

/// Every `.line` of the page, complete ones only (not the last line still being written).
const LINES: &str =
    r##"[...document.querySelectorAll("#log > .line:not(.partial)")].map((d) => d.textContent)"##;

/// The texts of the lines the filter lets through.
const VISIBLE: &str =
    r##"[...document.querySelectorAll("#log > .line:not([hidden])")].map((d) => d.textContent)"##;

/// A JS string literal holding `text`.
fn js(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// Opens the page of the server on `port` (with `query`, e.g. `?lines=50`), or `None` when
/// the test is skipped for want of a browser.
fn open(port: u16, query: &str) -> Option<Browser> {
    let browser = Browser::start()?;
    browser.goto(&format!("http://127.0.0.1:{port}/{query}"));
    Some(browser)
}

/// A server on `file`'s lines, and a browser that opened its page (`query` added to the
/// address) and shows them up to the last; `None` when there is no browser here (the test
/// has said it is skipped).
fn page_showing(file: &[String], query: &str) -> Option<(Server, Browser)> {
    let server = Server::start(&text(file));
    let browser = open(server.port(), query)?;
    wait_last_line(&browser, file.last().expect("a line"), PATIENCE);
    Some((server, browser))
}

/// Waits until the page's last complete line is `text`.
#[track_caller]
fn wait_last_line(browser: &Browser, text: &str, timeout: Duration) {
    browser.wait_for(
        &format!("the last line to be {text:?}"),
        timeout,
        &format!("{LINES}.at(-1) === {}", js(text)),
    );
}

/// The page's complete lines.
fn lines(browser: &Browser) -> Vec<String> {
    strings(browser.script(&format!("return {LINES};"), json!([])))
}

/// Asserts the page's complete lines are `want`, reporting the first difference briefly.
#[track_caller]
fn assert_lines(browser: &Browser, want: &[String], what: &str) {
    let got = lines(browser);
    if got == want {
        return;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: the page has {} lines, want {}; first difference at {at:?}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        at.map(|i| &got[i]),
        at.map(|i| &want[i]),
    );
}

fn strings(value: serde_json::Value) -> Vec<String> {
    serde_json::from_value(value).expect("an array of strings")
}

/// `n` log lines in a realistic shape, numbered from `from`; line `i` is distinct from all
/// others.
fn log_lines(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            let (level, msg) = match i % 17 {
                3 => ("WARN ", format!("slow upstream reply ms={}", 200 + i % 800)),
                11 => (
                    "ERROR",
                    format!("upstream refused conn_id={} retry=1", i * 7),
                ),
                _ => (
                    "INFO ",
                    format!(
                        "GET /api/items/{} status=200 bytes={} ms={}",
                        i * 31 % 1000,
                        100 + i * 13 % 4000,
                        i % 40
                    ),
                ),
            };
            format!(
                "2026-12-06T12:{:02}:{:02}.{:03}Z {level} req={i:06} {msg}",
                i / 3600 % 60,
                i / 60 % 60,
                i * 37 % 1000
            )
        })
        .collect()
}

/// The lines as file content, each ended by a newline.
fn text(lines: &[String]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| [l.as_bytes(), b"\n"].concat())
        .collect()
}

/// Where the screenshot of the page goes: the README shows a copy of it (docs/web.png).
fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-page.png")
}

#[test]
fn the_page_shows_the_last_lines_and_an_appended_line_within_a_second() {
    let file = log_lines(0, 1000);
    let Some((server, browser)) = page_showing(&file, "") else {
        return;
    };
    assert_lines(&browser, &file[800..], "the last 200 lines, the default");
    let title = browser.script("return document.title;", json!([]));
    assert!(
        title.as_str().is_some_and(|t| t.contains("served.log")),
        "the file's name in the title: {title}"
    );
    browser.wait_for(
        "the state to say live",
        PATIENCE,
        r#"document.getElementById("state").textContent === "live""#,
    );
    // Nothing but the page itself and its stream: no fonts, scripts or images from anywhere.
    let resources = strings(browser.script(
        "return performance.getEntriesByType('resource').map((e) => e.name);",
        json!([]),
    ));
    let origin = format!("http://127.0.0.1:{}/", server.port());
    assert!(
        resources.iter().all(|r| r.starts_with(&origin)),
        "resources from elsewhere: {resources:?}"
    );
    browser.screenshot(&screenshot_path());
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("note: screenshot at {}\n", screenshot_path().display()).as_bytes(),
    );

    let next = log_lines(1000, 1);
    let appended = Instant::now();
    server.append(&text(&next));
    wait_last_line(&browser, &next[0], PATIENCE);
    let took = appended.elapsed();
    assert!(
        took < SHOWN_WITHIN,
        "the appended line showed after {took:?}"
    );
    assert_lines(
        &browser,
        &[&file[800..], &next[..]].concat(),
        "and the new one",
    );
}

#[test]
fn a_flood_of_20000_lines_leaves_at_most_the_cap_in_the_page_and_it_stays_responsive() {
    let first = log_lines(0, 10);
    let Some((server, browser)) = page_showing(&first, "") else {
        return;
    };
    // How the page draws: the most lines it adds to the log at once (one batch a frame),
    // and the longest gap between two animation frames while the flood comes in.
    browser.script(
        r#"window.seen_ = { batch: 0, frames: 0, worst: 0, last: performance.now() };
           new MutationObserver((records) => {
               for (const r of records) seen_.batch = Math.max(seen_.batch, r.addedNodes.length);
           }).observe(document.getElementById("log"), { childList: true });
           const tick = (now) => {
               seen_.frames++;
               seen_.worst = Math.max(seen_.worst, now - seen_.last);
               seen_.last = now;
               requestAnimationFrame(tick);
           };
           requestAnimationFrame(tick);
           return null;"#,
        json!([]),
    );
    let flood = log_lines(10, 20_000);
    for chunk in flood.chunks(500) {
        server.append(&text(chunk));
    }
    let last = flood.last().expect("lines");
    // Why six times the usual patience? Taking in 20,000 lines is seconds of the browser's
    // CPU, which a machine loaded far beyond its cores stretches past 10 s (seen once at a
    // load average of 37). What this test asserts is the cap, the batches and a page that
    // answers the filter at once afterwards, not how fast a flood is drawn.
    wait_last_line(&browser, last, PATIENCE * 6);
    let count = browser.script(
        "return document.getElementById('log').childElementCount;",
        json!([]),
    );
    assert!(
        count.as_u64().is_some_and(|n| n as usize <= CAP),
        "{count} elements in the log, cap {CAP}"
    );
    let shown = lines(&browser);
    let all: Vec<String> = first.iter().chain(&flood).cloned().collect();
    assert!(
        shown.len() >= CAP - 1 && all.ends_with(&shown),
        "the page holds {} lines, not the file's last ones up to the cap",
        shown.len()
    );
    let visible = browser.script(
        r##"const log = document.getElementById("log").getBoundingClientRect();
            const line = [...document.querySelectorAll("#log > .line")].at(-1).getBoundingClientRect();
            return line.top >= log.top && line.bottom <= log.bottom;"##,
        json!([]),
    );
    assert_eq!(visible, json!(true), "the last line is in view");
    // Bounded work per frame: never more than a batch of lines (and a marker) added at
    // once, however much arrived.
    let seen = browser.script("return seen_;", json!([]));
    assert!(
        seen["batch"]
            .as_u64()
            .is_some_and(|n| n as usize <= BATCH + 1),
        "lines added in one go: {seen}"
    );
    // The longest frame gap is reported, not asserted: on a shared machine it measures the
    // machine's load as much as the page. That the page still answers a person is asserted
    // below: the filter works on the flooded page at once.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("note: web flood: {seen} (frames drawn, longest gap between frames in ms)\n")
            .as_bytes(),
    );
    browser.type_into("#filter", &last[..30]);
    browser.wait_for(
        "the filter to leave the one matching line",
        PATIENCE,
        &format!("{VISIBLE}.length === 1 && {VISIBLE}[0] === {}", js(last)),
    );
}

/// Appends `lines` while the reader has scrolled away from the end, and waits until the jump
/// control counts them, in its words (`wording`: "5 new lines").
fn append_held_back(server: &Server, browser: &Browser, lines: &[String], wording: &str) {
    server.append(&text(lines));
    browser.wait_for(
        &format!("the jump control to count {wording}"),
        PATIENCE,
        &format!(
            "document.getElementById('jump').textContent.includes({})",
            js(wording)
        ),
    );
}

#[test]
fn scrolling_up_stops_following_and_the_jump_control_or_end_brings_it_back() {
    let file = log_lines(0, 1000);
    let Some((server, browser)) = page_showing(&file, "") else {
        return;
    };

    // Home on the log scrolls it to the top, as it does for a person (smoothly: wait for
    // the top).
    browser.type_into("#log", KEY_HOME);
    browser.wait_for(
        "the top, and the jump control",
        PATIENCE,
        "document.getElementById('log').scrollTop === 0 && !document.getElementById('jump').hidden",
    );
    let more = log_lines(1000, 5);
    append_held_back(&server, &browser, &more, "5 new lines");
    assert_eq!(
        lines(&browser).last(),
        Some(&file[999]),
        "new lines held back"
    );
    let top = browser.script(
        "return document.getElementById('log').scrollTop;",
        json!([]),
    );
    assert_eq!(top, json!(0), "the view stays where the reader put it");

    browser.click("#jump");
    wait_last_line(&browser, &more[4], PATIENCE);
    browser.wait_for(
        "following again: at the bottom, the control gone",
        PATIENCE,
        r#"(() => { const l = document.getElementById("log");
            return document.getElementById("jump").hidden
                && l.scrollHeight - l.scrollTop - l.clientHeight < 8; })()"#,
    );
    assert_lines(
        &browser,
        &[&file[800..], &more[..]].concat(),
        "every line once",
    );

    // Again, and back with the End key this time.
    browser.type_into("#log", KEY_HOME);
    browser.wait_for(
        "the jump control",
        PATIENCE,
        "!document.getElementById('jump').hidden",
    );
    let last = log_lines(1005, 1);
    append_held_back(&server, &browser, &last, "1 new line)");
    browser.type_into("#log", KEY_END);
    wait_last_line(&browser, &last[0], PATIENCE);
    browser.wait_for(
        "the control gone",
        PATIENCE,
        "document.getElementById('jump').hidden",
    );
}

#[test]
fn pause_holds_new_lines_until_resume() {
    let file = log_lines(0, 50);
    let Some((server, browser)) = page_showing(&file, "") else {
        return;
    };
    browser.click("#pause");
    browser.wait_for(
        "the state to say paused",
        PATIENCE,
        "document.getElementById('state').textContent === 'paused'",
    );
    let more = log_lines(50, 3);
    server.append(&text(&more));
    browser.wait_for(
        "the resume control to count 3 new lines",
        PATIENCE,
        "document.getElementById('jump').textContent.includes('3 new lines')",
    );
    assert_lines(&browser, &file, "nothing drawn while paused");
    // The keyboard's way: p resumes.
    browser.type_into("#log", "p");
    wait_last_line(&browser, &more[2], PATIENCE);
    assert_lines(
        &browser,
        &[&file[..], &more[..]].concat(),
        "all after resuming",
    );
}

#[test]
fn the_filter_hides_and_shows_lines_and_marks_the_matches() {
    let mut file = Vec::new();
    for i in 0..30 {
        file.push(format!("alpha {i}"));
        file.push(format!("Beta {i}"));
        file.push(format!("gamma-{i} [x]"));
    }
    let Some((server, browser)) = page_showing(&file, "") else {
        return;
    };
    let betas: Vec<String> = file
        .iter()
        .filter(|l| l.starts_with("Beta"))
        .cloned()
        .collect();

    // Plain text, case-insensitive; the keyboard's way in: / focuses the box.
    browser.type_into("#log", "/");
    browser.wait_for(
        "/ to focus the filter",
        PATIENCE,
        "document.activeElement === document.getElementById('filter')",
    );
    browser.type_into("#filter", "BETA");
    browser.wait_for(
        "only the Beta lines",
        PATIENCE,
        &format!(
            "JSON.stringify({VISIBLE}) === {}",
            js(&serde_json::to_string(&betas).unwrap())
        ),
    );
    let marks = strings(browser.script(
        "return [...document.querySelectorAll('#log mark')].map((m) => m.textContent);",
        json!([]),
    ));
    assert_eq!(marks, vec!["Beta".to_string(); 30], "each match marked");
    // New lines are filtered as they come.
    server.append(b"alpha new\nbeta new\n");
    wait_last_line(&browser, "beta new", PATIENCE);
    assert_eq!(
        strings(browser.script(&format!("return {VISIBLE};"), json!([]))).last(),
        Some(&"beta new".to_string())
    );
    let hidden = browser.script(
        r##"return [...document.querySelectorAll("#log > .line")].find((d) => d.textContent === "alpha new").hidden;"##,
        json!([]),
    );
    assert_eq!(
        hidden,
        json!(true),
        "a new line that does not match is hidden"
    );

    // Plain text means plain: brackets are not a character class.
    browser.click("#clear");
    browser.type_into("#filter", "[x]");
    browser.wait_for(
        "only the gamma lines",
        PATIENCE,
        &format!("{VISIBLE}.length === 30 && {VISIBLE}.every((l) => l.endsWith('[x]'))"),
    );

    // A regular expression.
    browser.click("#regex");
    browser.click("#clear");
    browser.type_into("#filter", "^alpha [0-9]+$");
    browser.wait_for(
        "only the numbered alpha lines",
        PATIENCE,
        &format!("{VISIBLE}.length === 30 && {VISIBLE}.every((l) => /^alpha \\d+$/.test(l))"),
    );
    // One that does not compile says so and filters nothing away.
    browser.click("#clear");
    browser.type_into("#filter", "(");
    browser.wait_for(
        "the error",
        PATIENCE,
        "document.getElementById('error').textContent.includes('not a regular expression')",
    );
    assert_eq!(
        browser.script(
            "return document.getElementById('filter').getAttribute('aria-invalid');",
            json!([])
        ),
        json!("true")
    );

    // Clear shows everything again, unmarked.
    browser.click("#clear");
    browser.wait_for(
        "every line again",
        PATIENCE,
        &format!(
            "{VISIBLE}.length === {} && !document.querySelector('#log mark')",
            file.len() + 2
        ),
    );
    assert_eq!(
        browser.script(
            "return document.getElementById('error').textContent;",
            json!([])
        ),
        json!("")
    );
}

#[test]
fn utf8_split_across_reads_decodes_and_invalid_bytes_show_as_replacement_characters() {
    let server = Server::start(b"caf\xc3\xa9 ok\nbad \xff\xfe bytes\n");
    let Some(browser) = open(server.port(), "") else {
        return;
    };
    wait_last_line(&browser, "bad \u{FFFD}\u{FFFD} bytes", PATIENCE);
    assert_eq!(lines(&browser), ["café ok", "bad \u{FFFD}\u{FFFD} bytes"]);
    // A euro sign (e2 82 ac) in two appends: the page gets the first two bytes on their own.
    server.append(b"price \xe2\x82");
    browser.wait_for(
        "the unfinished line",
        PATIENCE,
        "document.querySelector('#log > .partial')?.textContent === 'price '",
    );
    server.append(b"\xac 5\n");
    wait_last_line(&browser, "price € 5", PATIENCE);
    assert_eq!(
        lines(&browser),
        ["café ok", "bad \u{FFFD}\u{FFFD} bytes", "price € 5"]
    );
}

#[test]
fn a_line_without_end_is_shown_in_pieces_and_nothing_is_lost() {
    let server = Server::start(b"before\n");
    let Some(browser) = open(server.port(), "") else {
        return;
    };
    wait_last_line(&browser, "before", PATIENCE);
    // 250,000 characters: more than a line may hold in the page. Some of it arrives with
    // no newline yet, then the rest with its newline; a character of two UTF-16 units
    // (U+1F600) sits on each cut the page would make at 100,000 units.
    let long: String = (0..250_000u32)
        .map(|i| match i {
            99_999 | 199_998 => '\u{1F600}',
            _ => char::from(b'a' + (i % 26) as u8),
        })
        .collect();
    let (first, rest) = long.split_at(long.len() / 2 + 1);
    server.append(first.as_bytes());
    browser.wait_for(
        "the unfinished line to be drawn",
        PATIENCE,
        "document.querySelector('#log > .partial') !== null || document.querySelectorAll('#log > .line').length > 1",
    );
    server.append(rest.as_bytes());
    server.append(b"\nafter\n");
    wait_last_line(&browser, "after", PATIENCE);
    let shown = lines(&browser);
    let pieces = &shown[1..shown.len() - 1];
    assert!(
        pieces.len() >= 3 && pieces.iter().all(|p| p.encode_utf16().count() <= 100_000),
        "{} pieces of {:?} characters",
        pieces.len(),
        pieces.iter().map(String::len).collect::<Vec<_>>()
    );
    assert!(pieces.concat() == long, "the pieces are the line, in order");
}

#[test]
fn a_server_restart_mid_stream_loses_and_doubles_nothing() {
    let dir = TempDir::new();
    let path = dir.join("app.log");
    fs::write(&path, text(&log_lines(0, 50))).unwrap();
    let port = low_port();
    let mut server = serve_at(&path, port);
    let Some(browser) = open(port, "") else {
        return;
    };
    wait_last_line(&browser, &log_lines(49, 1)[0], PATIENCE);
    append(&path, &text(&log_lines(50, 10)));
    wait_last_line(&browser, &log_lines(59, 1)[0], PATIENCE);
    // The server stops in the middle of a line, and of a character.
    append(&path, b"split \xe2\x82");
    browser.wait_for(
        "the unfinished line",
        PATIENCE,
        "document.querySelector('#log > .partial')?.textContent === 'split '",
    );
    server.sigterm();
    server.expect_exit(0, PATIENCE);
    browser.wait_for(
        "the page to notice",
        PATIENCE,
        "document.getElementById('state').dataset.state !== 'live'",
    );
    append(&path, b"\xac done\n");
    append(&path, &text(&log_lines(60, 10)));
    let _server = serve_at(&path, port);
    append(&path, &text(&log_lines(70, 10)));
    wait_last_line(&browser, &log_lines(79, 1)[0], PATIENCE);
    // The file is under the 200 lines the page starts with: it must hold all of it, once.
    let want: Vec<String> = String::from_utf8(fs::read(&path).unwrap())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_lines(&browser, &want, "the whole file, each line once");
    assert!(want.contains(&"split € done".to_string()));
    browser.wait_for(
        "the state to say live",
        PATIENCE,
        "document.getElementById('state').textContent === 'live'",
    );
}

#[test]
fn a_replaced_file_shows_a_marker_and_the_new_file_from_its_start() {
    let dir = TempDir::new();
    let path = dir.join("app.log");
    let old = log_lines(0, 20);
    fs::write(&path, text(&old)).unwrap();
    let server = Server::builder().serve(&path).start();
    let Some(browser) = open(server.port(), "") else {
        return;
    };
    wait_last_line(&browser, &old[19], PATIENCE);
    // Rotation by rename: the old file moves away, a new one takes its name. tailsrv follows
    // the name: it ends the old file's streams and serves the new file, with no restart.
    let new: Vec<String> = (0..5).map(|i| format!("new file line {i}")).collect();
    fs::rename(&path, dir.join("app.log.1")).unwrap();
    fs::write(&path, text(&new[..3])).unwrap();
    wait_last_line(&browser, &new[2], PATIENCE);
    append(&path, &text(&new[3..]));
    wait_last_line(&browser, &new[4], PATIENCE);
    let shown = strings(browser.script(
        r##"return [...document.querySelectorAll("#log > div")].map((d) => d.className + ":" + d.textContent);"##,
        json!([]),
    ));
    let (before, after) = shown.split_at(old.len());
    assert_eq!(
        before,
        old.iter().map(|l| format!("line:{l}")).collect::<Vec<_>>(),
        "the old file's lines first"
    );
    assert!(
        after[0].starts_with("marker:file replaced"),
        "then the marker, not {:?}",
        after[0]
    );
    assert_eq!(
        after[1..],
        new.iter().map(|l| format!("line:{l}")).collect::<Vec<_>>(),
        "then the new file from its first line"
    );
}

#[test]
fn the_page_fits_a_phone_screen() {
    let server = Server::start(&text(&log_lines(0, 300)));
    let Some(browser) = open(server.port(), "?wrap=1") else {
        return;
    };
    browser.window_size(390, 844);
    wait_last_line(&browser, &log_lines(299, 1)[0], PATIENCE);
    let fits = browser.script(
        r#"const w = document.documentElement.clientWidth;
           const controls = [...document.querySelectorAll("header input, header select, header button")];
           return JSON.stringify({
               page: document.documentElement.scrollWidth <= w,
               controls: controls.every((c) => { const r = c.getBoundingClientRect(); return r.left >= 0 && r.right <= w; }),
               wrapped: document.getElementById("log").scrollWidth <= document.getElementById("log").clientWidth,
           });"#,
        json!([]),
    );
    assert_eq!(
        fits,
        json!(r#"{"page":true,"controls":true,"wrapped":true}"#),
        "at 390 px wide nothing sticks out, and wrapped lines need no sideways scrolling"
    );
    // The wrap toggle: off, the long lines run past the edge (and the log scrolls
    // sideways); on again, they fit.
    let overflows = "(() => { const l = document.getElementById('log'); return l.scrollWidth > l.clientWidth; })()";
    browser.click("#wrap");
    browser.wait_for("long lines unwrapped", PATIENCE, overflows);
    browser.click("#wrap");
    browser.wait_for("long lines wrapped", PATIENCE, &format!("!{overflows}"));
}

#[test]
fn the_lines_selector_starts_over_with_that_many() {
    let file = log_lines(0, 300);
    let Some((server, browser)) = page_showing(&file, "?lines=50") else {
        return;
    };
    assert_lines(&browser, &file[250..], "?lines=50 in the page's address");
    // The selector, as a person uses it: the last 10 lines of the file as it is now.
    browser.click("#lines option:first-child");
    browser.wait_for(
        "the view to start over with 10 lines",
        PATIENCE,
        &format!("{LINES}.length === 10"),
    );
    assert_lines(&browser, &file[290..], "the last 10");
    server.append(b"and one more\n");
    wait_last_line(&browser, "and one more", PATIENCE);
    assert_lines(
        &browser,
        &[&file[290..], &["and one more".to_string()]].concat(),
        "then following",
    );
}

#[test]
fn the_text_has_readable_contrast_in_light_and_dark() {
    let Some((_server, browser)) = page_showing(&log_lines(0, 300), "") else {
        return;
    };
    // Bring out the jump control, the marks and the error message, to measure them too.
    browser.type_into("#log", KEY_HOME);
    browser.wait_for(
        "the jump control",
        PATIENCE,
        "!document.getElementById('jump').hidden",
    );
    browser.type_into("#filter", "INFO");
    browser.wait_for(
        "marks",
        PATIENCE,
        "document.querySelector('#log mark') !== null",
    );
    // WCAG 2 contrast ratios of text against what is behind it (the nearest opaque
    // background up the tree).
    let measure = r##"
        const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
        const lum = ([r, g, b]) => {
            const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
        };
        const behind = (el) => {
            for (; el; el = el.parentElement) {
                const c = rgb(getComputedStyle(el).backgroundColor);
                if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
            }
            return [255, 255, 255];
        };
        const ratio = (el) => {
            const a = lum(rgb(getComputedStyle(el).color)), b = lum(behind(el));
            return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        };
        const out = {};
        for (const sel of ["#log .line", "#log mark", "#title", "#state", "#note", "#jump",
                           "#pause", "#filter", "#error", "label"]) {
            out[sel] = Math.round(ratio(document.querySelector(sel)) * 10) / 10;
        }
        return out;"##;
    for dark in [false, true] {
        browser.color_scheme(dark);
        browser.wait_for(
            "the scheme to apply",
            PATIENCE,
            &format!("matchMedia('(prefers-color-scheme: dark)').matches === {dark}"),
        );
        if dark {
            // The error message shows only for a bad regular expression.
            browser.click("#regex");
            browser.type_into("#filter", "(");
            browser.wait_for(
                "the error",
                PATIENCE,
                "document.getElementById('error').textContent !== ''",
            );
            browser
                .screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-page-dark.png"));
        }
        let ratios = browser.script(measure, json!([]));
        let low: Vec<_> = ratios
            .as_object()
            .expect("an object")
            .iter()
            .filter(|(_, r)| r.as_f64().is_none_or(|r| r < 4.5))
            .collect();
        assert!(
            low.is_empty(),
            "below the 4.5:1 WCAG AA asks of text ({}): {low:?}",
            if dark { "dark" } else { "light" }
        );
    }
}

/// What Chromium sends when it opens a page.
const BROWSER_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

/// Sends `METHOD / HTTP/1.1` with `Accept: accept`.
fn request_index(port: u16, method: &str, accept: &str) -> Client {
    let mut client = Client::connect(port);
    client
        .send(format!("{method} / HTTP/1.1\r\nHost: test\r\nAccept: {accept}\r\n\r\n").as_bytes());
    client
}

#[test]
fn a_browser_gets_the_page_at_the_root_and_curl_gets_the_help() {
    let dir = TempDir::new();
    let path = dir.join("app <1>.log");
    fs::write(&path, b"one\n").unwrap();
    let server = InProcess::start(&path, &[]);
    let port = server.port();

    let (head, body) = request_index(port, "GET", BROWSER_ACCEPT).read_http_response(PATIENCE);
    assert_eq!(head.status, 200);
    assert_eq!(head.field("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(head.field("X-Content-Type-Options"), Some("nosniff"));
    let policy = head.field("Content-Security-Policy").unwrap_or_default();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    assert!(
        body.len() < 64 << 10,
        "the page weighs {} bytes",
        body.len()
    );
    assert!(
        body.contains("<title>app &lt;1&gt;.log · tailsrv</title>"),
        "the file's name, escaped, in the title"
    );
    assert!(body.contains("stream?lines="), "the page reads /stream");
    assert!(
        !body.contains(&dir.path().display().to_string()),
        "no directory"
    );

    // HEAD: the same head, no body.
    let mut client = request_index(port, "HEAD", BROWSER_ACCEPT);
    let head_only = client.read_http_head(PATIENCE);
    assert_eq!(head_only.number("Content-Length"), body.len() as u64);
    let (rest, _) = client.read_to_end(PATIENCE);
    assert!(rest.is_empty(), "a body after HEAD: {} bytes", rest.len());

    // curl sends */*: the text help with the curl line.
    let (head, body) = request_index(port, "GET", "*/*").read_http_response(PATIENCE);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.field("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(body.contains("curl -N http://test/stream"), "{body}");
    assert_eq!(server.handle.http_responses(200), 3);
}

#[test]
fn no_http_and_allow_keep_the_page_from_whom_they_keep_the_stream() {
    let dir = TempDir::new();
    let path = dir.join("app.log");
    fs::write(&path, b"one\n").unwrap();
    let server = InProcess::start(&path, &["--no-http"]);
    request_index(server.port(), "GET", BROWSER_ACCEPT).expect_closed_without_data(PATIENCE);
    let server = InProcess::start(&path, &["--allow", "10.0.0.0/8"]);
    request_index(server.port(), "GET", BROWSER_ACCEPT).expect_closed_without_data(PATIENCE);
    assert_eq!(server.handle.http_responses(200), 0);
}
