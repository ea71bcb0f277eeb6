//! Security headers on every response of the UI and the API (issue 28, finding 6): a Content
//! Security Policy that lets a page load nothing but its own origin — the pages' inline
//! `style` attributes and `<style>` element are allowed (`style-src 'unsafe-inline'`; maud
//! escapes every value written into them), and the two inline scripts, the log follower and
//! the live pages' poller (`live.rs`), by their SHA-256 only — no framing (`frame-ancestors 'none'`, `X-Frame-Options: DENY`), no content
//! sniffing, and no Referer sent to other sites. A header a handler set is left as it is.

use std::sync::LazyLock;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The policy, with the hashes of the pages' two scripts: the log follower and the live
/// pages' poller.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'self'; script-src 'sha256-{}' 'sha256-{}'; style-src 'self' 'unsafe-inline'; \
         img-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; \
         base-uri 'none'; form-action 'self'",
        script_hash(super::logs::FOLLOW_SCRIPT),
        script_hash(super::live::LIVE_SCRIPT)
    )
});

/// The base64 of a script's SHA-256, as CSP's `'sha256-…'` source names it.
pub fn script_hash(script: &str) -> String {
    use sha2::Digest;
    base64(&sha2::Sha256::digest(script.as_bytes()))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The middleware: the headers on whatever the routes (or the guard, or a fallback) answered.
pub async fn secure(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 3] = [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in fixed {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        if let Ok(v) = HeaderValue::from_str(&CONTENT_SECURITY_POLICY) {
            headers.insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_follower_and_the_live_poller_are_the_only_inline_scripts_allowed() {
        let policy = CONTENT_SECURITY_POLICY.as_str();
        let script_src = policy
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("script-src"))
            .expect("a script-src");
        assert_eq!(
            script_src,
            format!(
                "script-src 'sha256-{}' 'sha256-{}'",
                script_hash(super::super::logs::FOLLOW_SCRIPT),
                script_hash(super::super::live::LIVE_SCRIPT)
            )
        );
    }

    #[test]
    fn base64_as_rfc_4648_has_it() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // the SHA-256 of "" as CSP names it
        assert_eq!(
            script_hash(""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}
