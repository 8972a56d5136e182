//! The request id: the client's `X-Request-Id` when it is sane, else a
//! fresh one; sent upstream, echoed to the client and written in the logs.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent request id that is kept as it is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's `X-Request-Id` if it is reasonable (1–128 visible ASCII
/// characters), else a fresh random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
        {
            return v.clone();
        }
    }
    new_request_id()
}

thread_local! {
    /// Per-thread generator state: request ids need uniqueness, not secrecy, and
    /// a thread-local generator shares nothing between requests on other cores.
    static RNG: Cell<u64> = Cell::new({
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        h.finish() | 1
    });
}

fn next_u64() -> u64 {
    RNG.with(|cell| {
        // xorshift64*
        let mut x = cell.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        cell.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// 32 lower-case hex digits (128 random bits).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let words = [next_u64(), next_u64()];
    for (i, w) in words.iter().enumerate() {
        for j in 0..16 {
            out[i * 16 + j] = HEX[((w >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;

    #[test]
    fn request_id_kept_when_sane_else_generated() {
        let h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(request_id(&h), "abc-123");
        let long = "a".repeat(200);
        let h = map(&[("x-request-id", &long)]);
        let id = request_id(&h);
        assert_eq!(id.len(), 32);
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
