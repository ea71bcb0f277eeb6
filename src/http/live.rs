//! Live pages (issue 29, item 2): an open grid or run page follows what happens by polling
//! itself with a conditional GET, not by a stream. Decided over Server-Sent Events because a
//! poll holds no connection between answers (no per-replica stream budget, nothing for a proxy
//! to buffer or time out, any replica answers), and a page nobody changed costs one render and
//! a `304` without a body.
//!
//! - [`conditional`] answers a page with a strong `ETag` (its body's SHA-256) and `304 Not
//!   Modified` when the request's `If-None-Match` names it;
//! - [`LIVE_SCRIPT`] (allowed by its hash in the Content Security Policy) fetches the page again
//!   every [`LIVE_INTERVAL_SECONDS`] while the tab is visible and, when it changed, swaps in the
//!   new copy of each element marked `data-live` (by id) — forms and what the user typed stay.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::Markup;

/// How often an open page asks whether it changed.
pub const LIVE_INTERVAL_SECONDS: u32 = 5;

/// The poller: the interval is read from the script element's `data-every` (seconds).
pub const LIVE_SCRIPT: &str = r#"
(() => {
  const every = 1000 * Number(document.currentScript.dataset.every || 5);
  let etag = null;
  const poll = async () => {
    if (document.hidden) return;
    const headers = etag ? {'If-None-Match': etag} : {};
    const r = await fetch(location.href, {credentials: 'same-origin', headers, cache: 'no-store'});
    if (r.status !== 200) return;
    const fresh = etag !== null;
    etag = r.headers.get('etag');
    if (!fresh) return;
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    for (const next of doc.querySelectorAll('[data-live][id]')) {
      const now = document.getElementById(next.id);
      if (now) now.replaceWith(document.importNode(next, true));
    }
    document.body.dataset.updated = String(Date.now());
  };
  poll();
  setInterval(() => { poll().catch(() => {}); }, every);
})();
"#;

/// `markup` as a `200` with its ETag, or a bodiless `304` when the caller has that copy.
pub fn conditional(request: &HeaderMap, markup: Markup) -> Response {
    let body = markup.into_string();
    let etag = format!("\"{}\"", &hex_sha256(body.as_bytes())[..32]);
    let has_it = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().trim_start_matches("W/") == etag);
    let mut response = if has_it {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    // a browser asks again every time; the page is private to its caller
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_page_is_not_sent_twice() {
        let page = || maud::html! { p { "a" } };
        let first = conditional(&HeaderMap::new(), page());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut asked = HeaderMap::new();
        asked.insert(header::IF_NONE_MATCH, etag.clone());
        let again = conditional(&asked, page());
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag);
        let changed = conditional(&asked, maud::html! { p { "b" } });
        assert_eq!(changed.status(), StatusCode::OK);
        assert_ne!(changed.headers()[header::ETAG], etag);
    }
}
