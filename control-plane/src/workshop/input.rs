//! What a workshop request may carry, checked before anything is stored:
//! the user id, the e-mail address, the names, the analytics URL and the
//! request parameters. Each refusal names the field and the value.

use super::portal::WorkshopRequest;
use crate::session::model::{invalid, validate_optional_text, Invalid, RequestParameter};

/// The longest portal user id: what the gateway's cookie carries of a user.
pub const MAX_USER_ID: usize = 128;
/// The longest analytics URL kept.
pub const MAX_ANALYTICS_URL: usize = 2048;
/// The most request parameters, and the longest name and value of one.
pub const MAX_PARAMETERS: usize = 64;
pub const MAX_PARAMETER_NAME: usize = 64;
pub const MAX_PARAMETER_VALUE: usize = 4096;

/// Checks what does not depend on the store: the e-mail address (as the
/// portal does), the names, the analytics URL, and the parameters' own
/// shape (see [`check_parameters`] for what the environment adds).
pub fn check_request(req: &WorkshopRequest) -> Result<(), Invalid> {
    if let Some(e) = &req.email {
        check_email(e)?;
    }
    validate_optional_text("first_name", &req.first_name)?;
    validate_optional_text("last_name", &req.last_name)?;
    if let Some(u) = &req.analytics_url {
        if u.len() > MAX_ANALYTICS_URL || u.chars().any(char::is_control) {
            return Err(invalid(
                "analytics_url",
                format!("must be at most {MAX_ANALYTICS_URL} bytes without control characters"),
            ));
        }
    }
    check_parameters(&req.parameters, false)
}

/// A user id the portal could have made or been given: what its
/// `<slug:name>` path parameter matches (`[-a-zA-Z0-9_]+`), so that the
/// id works in `/workshops/user/<user>/sessions/`, bounded, and starting
/// with a letter or digit, as every sessiongate user name does. Only ids
/// of users not yet known are checked: an operator's existing user keeps
/// working whatever its name.
pub fn check_user_id(id: &str) -> Result<(), Invalid> {
    let ok = id.len() <= MAX_USER_ID
        && id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "user",
            format!(
                "{id:?} is not a portal user id (1-{MAX_USER_ID} of letters, digits, - and _, \
                 starting with a letter or digit)"
            ),
        ))
    }
}

/// An e-mail address as Django's `validate_email` takes one, near enough:
/// a dot-atom local part, `@`, and a domain of DNS labels with a top-level
/// one of letters (or `localhost`). The portal refuses anything else with
/// `Invalid email address provided`.
pub fn check_email(email: &str) -> Result<(), Invalid> {
    let refuse = || {
        invalid(
            "email",
            format!("{email:?}: Invalid email address provided"),
        )
    };
    if email.len() > 320 {
        return Err(refuse());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(refuse)?;
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&b);
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(atext));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = domain.eq_ignore_ascii_case("localhost")
        || (labels.len() >= 2
            && labels.iter().all(|l| label_ok(l))
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic())));
    if local_ok && domain_ok {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// The parameters' names and values. A name must be able to travel in a
/// header name (`X-Workshop-Param-<name>`): 1-64 of letters, digits, `-`
/// and `_`, whether or not the environment sends them, so that turning
/// that on never meets a name it cannot send. A value is text without
/// control characters; when the environment sends parameters as headers
/// (`as_headers`), it must be a header value too (printable ASCII), and
/// two names may not differ only in case (they would be one header).
pub fn check_parameters(params: &[RequestParameter], as_headers: bool) -> Result<(), Invalid> {
    if params.len() > MAX_PARAMETERS {
        return Err(invalid(
            "parameters",
            format!("{} parameters; at most {MAX_PARAMETERS}", params.len()),
        ));
    }
    for (i, p) in params.iter().enumerate() {
        let name_ok = !p.name.is_empty()
            && p.name.len() <= MAX_PARAMETER_NAME
            && p.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(invalid(
                format!("parameters[{i}].name"),
                format!(
                    "{:?} must be 1-{MAX_PARAMETER_NAME} of letters, digits, - and _ \
                     (it may travel in an X-Workshop-Param-<name> header)",
                    p.name
                ),
            ));
        }
        let field = || format!("parameters[{i}].value");
        if p.value.len() > MAX_PARAMETER_VALUE || p.value.chars().any(char::is_control) {
            return Err(invalid(
                field(),
                format!(
                    "parameter {:?}: at most {MAX_PARAMETER_VALUE} bytes without control characters",
                    p.name
                ),
            ));
        }
        if as_headers {
            if !p.value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                return Err(invalid(
                    field(),
                    format!(
                        "parameter {:?}: {:?} is not a valid header value (printable ASCII), \
                         and this environment sends parameters as X-Workshop-Param- headers",
                        p.name, p.value
                    ),
                ));
            }
            if let Some(other) = params[..i]
                .iter()
                .find(|o| o.name.eq_ignore_ascii_case(&p.name))
            {
                return Err(invalid(
                    format!("parameters[{i}].name"),
                    format!(
                        "{:?} and {:?} would be the same X-Workshop-Param- header",
                        other.name, p.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, value: &str) -> RequestParameter {
        RequestParameter {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn user_ids_are_what_the_portals_slug_matches() {
        for ok in ["8d2d0c8b-6ff5-4244-b136-110fd8d8431a", "ann", "a_b-c", "7"] {
            assert!(check_user_id(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_USER_ID + 1);
        for bad in ["", "a b", "ann@example.org", "a.b", "-a", "_a", "é", &long] {
            let e = check_user_id(bad).unwrap_err();
            assert_eq!(e.field, "user", "{bad}");
        }
    }

    #[test]
    fn emails_are_checked_as_the_portal_does() {
        for ok in ["ann@example.org", "a.b+c@sub.example.co", "root@localhost"] {
            assert!(check_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ann",
            "@example.org",
            "ann@",
            "ann@example",
            "a..b@example.org",
            "ann@-x.org",
            "ann@example.o",
            "a b@example.org",
            "ann@exa_mple.org",
        ] {
            let e = check_email(bad).unwrap_err();
            assert_eq!(e.field, "email", "{bad}");
            assert!(e.message.contains("Invalid email address provided"), "{e}");
        }
    }

    #[test]
    fn parameters_must_be_able_to_travel_as_headers() {
        assert!(check_parameters(&[param("LEVEL", "2"), param("name", "Ann Lee")], true).is_ok());
        // Not ASCII: fine to keep, not to send as a header.
        let utf8 = [param("city", "Zürich")];
        assert!(check_parameters(&utf8, false).is_ok());
        let e = check_parameters(&utf8, true).unwrap_err();
        assert_eq!(e.field, "parameters[0].value");
        let e = check_parameters(&[param("a b", "1")], false).unwrap_err();
        assert_eq!(e.field, "parameters[0].name");
        let e = check_parameters(&[param("x", "a\r\nInjected: 1")], false).unwrap_err();
        assert_eq!(e.field, "parameters[0].value");
        let twins = [param("level", "1"), param("LEVEL", "2")];
        assert!(check_parameters(&twins, false).is_ok());
        let e = check_parameters(&twins, true).unwrap_err();
        assert_eq!(e.field, "parameters[1].name");
        let many: Vec<_> = (0..=MAX_PARAMETERS)
            .map(|i| param(&format!("p{i}"), ""))
            .collect();
        assert_eq!(
            check_parameters(&many, false).unwrap_err().field,
            "parameters"
        );
    }
}
