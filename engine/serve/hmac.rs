//! Signed requests of `runbook serve`: HMAC-SHA256 (the `hmac` crate) over the method, the
//! path, a timestamp, a nonce and the body, so that a signature is good for one request only;
//! verification compares in constant time (`Mac::verify_slice`).

use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2_hmac::Sha256>;

/// What a signature covers, in this order, each part ended by a newline (the body last, raw):
/// `METHOD\nPATH\nTIMESTAMP\nNONCE\nBODY`. The path includes the query string, if any.
pub fn signed_message(
    method: &str,
    path: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        method.len() + path.len() + timestamp.len() + nonce.len() + body.len() + 4,
    );
    for part in [method, path, timestamp, nonce] {
        m.extend_from_slice(part.as_bytes());
        m.push(b'\n');
    }
    m.extend_from_slice(body);
    m
}

/// Whether `tag` is the HMAC-SHA256 of `message` under `key`, compared in constant time.
pub fn verify(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Hex (either case) to bytes; `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &[u8], message: &[u8]) -> [u8; 32] {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// RFC 4231 §4.3 (case 2) and §4.7 (case 6, a key longer than a block).
    #[test]
    fn rfc4231_vectors() {
        assert_eq!(
            hex(&sign(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&sign(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn verify_accepts_the_tag_only() {
        let m = signed_message("POST", "/alerts", "1700000000", "n-1", b"{}");
        let tag = sign(b"key", &m);
        assert!(verify(b"key", &m, &tag));
        assert!(!verify(b"key", &m, &tag[..31]));
        assert!(!verify(b"other", &m, &tag));
        let other = signed_message(
            "POST",
            "/runs/1/steps/go/approve",
            "1700000000",
            "n-1",
            b"{}",
        );
        assert!(!verify(b"key", &other, &tag));
    }

    #[test]
    fn unhex_round_trips_and_refuses_garbage() {
        assert_eq!(unhex("00ff10").unwrap(), [0, 255, 16]);
        assert_eq!(unhex("00FF").unwrap(), [0, 255]);
        assert!(unhex("0").is_none());
        assert!(unhex("zz").is_none());
        assert!(unhex("é1").is_none());
    }
}
