//! The web page at `/`: one self-contained file (`src/web/index.html`: HTML, CSS and
//! JavaScript) compiled into the binary, with the served file's name in its title.
//!
//! The page reads `GET /stream` with `fetch()` and follows the file; everything it does is
//! in that one file, which loads nothing from anywhere else. It is built once per server,
//! when the server binds, and every shard sends the same bytes.

use std::path::Path;

/// The page as written, with `{{FILE}}` where the file's name goes.
const TEMPLATE: &str = include_str!("web/index.html");

/// The most the page may weigh. Why a limit? The page is sent whole from memory to every
/// browser that opens it, and a page that small is one a person can read in one sitting.
pub const MAX_PAGE: usize = 64 << 10;

// The build fails if the page outgrows its limit (a file name adds at most a few hundred
// bytes; the unit tests check the page as served).
const _: () = assert!(TEMPLATE.len() < MAX_PAGE - 1024);

/// The page for the file at `path`: its final name component, HTML-escaped, in the title.
///
/// Why the name and not the whole path? The page is for whoever may connect; the directory
/// layout of the server is none of their business, and the name is what tells logs apart.
pub fn page(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned());
    TEMPLATE.replace("{{FILE}}", &escape_html(&name))
}

/// `text` with the characters that mean something in HTML replaced by entities.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What the page may do, as a Content-Security-Policy: run its own inline script and style,
/// talk to this server and nothing else, be framed by nobody.
///
/// Why say it when the page loads nothing from outside anyway? Lines of the file are drawn
/// as text, never parsed as HTML; should that ever break, the browser still refuses to load
/// or send anything elsewhere.
pub const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The complete response for `GET /` (or `HEAD /`, `head_only`) from a browser.
pub fn response(page: &str, head_only: bool) -> String {
    crate::http::reply(
        "200 OK",
        &[],
        &[
            ("Content-Type", "text/html; charset=utf-8"),
            ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", "no-cache"),
            ("Content-Security-Policy", POLICY),
            ("Referrer-Policy", "no-referrer"),
            ("Vary", "Accept"),
        ],
        page,
        head_only,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small_and_loads_nothing_from_elsewhere() {
        let page = page(Path::new("/var/log/app.log"));
        assert!(page.len() < MAX_PAGE, "{} bytes", page.len());
        for outside in ["http:", "https:", "//cdn", "src=", "@import", "url("] {
            assert!(!page.contains(outside), "{outside} in the page");
        }
        assert!(page.contains("<title>app.log · tailsrv</title>"));
        assert!(!page.contains("{{FILE}}") && !page.contains("/var/log"));
    }

    #[test]
    fn the_files_name_is_escaped() {
        let page = page(Path::new("/srv/<b>&\"x'.log"));
        assert!(
            page.contains("<title>&lt;b&gt;&amp;&quot;x&#39;.log · tailsrv</title>"),
            "{}",
            &page[..400]
        );
        assert!(!page.contains("<b>"));
    }

    #[test]
    fn the_response_says_html_its_length_and_its_policy() {
        let page = page(Path::new("a.log"));
        let full = response(&page, false);
        let (head, body) = full.split_once("\r\n\r\n").expect("a head");
        assert_eq!(body, page);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        for line in [
            "Content-Type: text/html; charset=utf-8".to_string(),
            format!("Content-Length: {}", page.len()),
            format!("Content-Security-Policy: {POLICY}"),
            "X-Content-Type-Options: nosniff".to_string(),
        ] {
            assert!(
                head.contains(&format!("\r\n{line}\r\n")),
                "{line} in {head}"
            );
        }
        assert_eq!(response(&page, true), format!("{head}\r\n\r\n"));
    }
}
