//! Request headers a route adds for its upstream: facts the control plane
//! vouches for (a workshop session's request parameters), which the app
//! can trust only if no browser can send them. So a route that adds
//! headers first removes the client's headers of the same names, and may
//! reserve a whole name prefix: every client header under it is removed,
//! not only those the route sets, so that an app reading
//! `X-Workshop-Param-*` never sees one the control plane did not send.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Why a route's added headers were refused. Each names the header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddedHeaderError {
    #[error("header {0:?} is the gateway's to set, not a route's")]
    Reserved(String),
    #[error("header prefix {0:?} is not the start of a header name")]
    BadPrefix(String),
}

/// Request headers a route sets for its upstream, replacing any the client
/// sent under the same names, after every client header under
/// `reserved_prefix` is removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddedHeaders {
    /// Lower case (header names are): client headers whose name starts
    /// with it are removed.
    reserved_prefix: Option<Box<str>>,
    headers: Box<[(HeaderName, HeaderValue)]>,
}

/// Headers the gateway sets or removes itself on the way up, or that frame
/// the message: a route adding one would undo the gateway's own rewrite
/// (forwarding, request id, cookies) or break the message.
const GATEWAY_OWNED: [&str; 12] = [
    "connection",
    "content-length",
    "cookie",
    "forwarded",
    "host",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-request-id",
];

impl AddedHeaders {
    /// `headers` to set, after removing the client's headers under
    /// `reserved_prefix` (none: only the client's headers of the same
    /// names go). Refuses headers the gateway owns, and a prefix that no
    /// header name could start with.
    pub fn new(
        reserved_prefix: Option<&str>,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Self, AddedHeaderError> {
        let reserved_prefix = match reserved_prefix {
            None => None,
            Some(p) => {
                let lower = p.to_ascii_lowercase();
                if HeaderName::from_bytes(lower.as_bytes()).is_err() {
                    return Err(AddedHeaderError::BadPrefix(p.to_string()));
                }
                Some(lower.into_boxed_str())
            }
        };
        for (name, _) in &headers {
            let n = name.as_str();
            if GATEWAY_OWNED.contains(&n) || n.starts_with("x-forwarded-") || name == header::EXPECT
            {
                return Err(AddedHeaderError::Reserved(n.to_string()));
            }
        }
        Ok(AddedHeaders {
            reserved_prefix,
            headers: headers.into_boxed_slice(),
        })
    }

    /// The headers set, in order.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    pub fn reserved_prefix(&self) -> Option<&str> {
        self.reserved_prefix.as_deref()
    }

    /// Removes the client's headers under the reserved prefix, then sets
    /// each added header, replacing the client's of the same name.
    pub fn apply(&self, request: &mut HeaderMap) {
        if let Some(prefix) = self.reserved_prefix.as_deref() {
            // Collected first: a map cannot be changed while it is read.
            // Nothing is allocated when no client header is under the prefix.
            let forged: Vec<HeaderName> = request
                .keys()
                .filter(|n| n.as_str().starts_with(prefix))
                .cloned()
                .collect();
            for name in forged {
                request.remove(name);
            }
        }
        for (name, value) in self.headers.iter() {
            request.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;

    fn added(prefix: Option<&str>, pairs: &[(&str, &str)]) -> AddedHeaders {
        let headers = pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect();
        AddedHeaders::new(prefix, headers).unwrap()
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn added_headers_replace_the_clients_and_the_prefix_is_cleared() {
        let mut h = map(&[
            ("x-workshop-param-level", "forged"),
            ("x-workshop-param-level", "forged again"),
            ("X-Workshop-Param-Admin", "true"),
            ("x-workshop-parameter", "not under the prefix"),
            ("x-app", "kept"),
        ]);
        added(
            Some("X-Workshop-Param-"),
            &[
                ("x-workshop-param-level", "2"),
                ("x-workshop-param-name", "ann"),
            ],
        )
        .apply(&mut h);
        assert_eq!(values(&h, "x-workshop-param-level"), ["2"]);
        assert_eq!(values(&h, "x-workshop-param-name"), ["ann"]);
        assert!(h.get("x-workshop-param-admin").is_none());
        assert_eq!(values(&h, "x-workshop-parameter"), ["not under the prefix"]);
        assert_eq!(values(&h, "x-app"), ["kept"]);
    }

    #[test]
    fn without_a_prefix_only_the_same_names_are_replaced() {
        let mut h = map(&[("x-tenant", "forged"), ("x-other", "kept")]);
        added(None, &[("x-tenant", "acme")]).apply(&mut h);
        assert_eq!(values(&h, "x-tenant"), ["acme"]);
        assert_eq!(values(&h, "x-other"), ["kept"]);
    }

    #[test]
    fn headers_the_gateway_owns_are_refused() {
        for name in [
            "host",
            "cookie",
            "x-forwarded-proto",
            "connection",
            "expect",
        ] {
            let h = vec![(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("x"),
            )];
            assert_eq!(
                AddedHeaders::new(None, h),
                Err(AddedHeaderError::Reserved(name.to_string())),
                "{name}"
            );
        }
        assert_eq!(
            AddedHeaders::new(Some("x bad"), vec![]),
            Err(AddedHeaderError::BadPrefix("x bad".into()))
        );
    }
}
