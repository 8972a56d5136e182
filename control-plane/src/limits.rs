//! The brute-force limit: failed authentications per client address.
//!
//! Every credential a client can guess is checked against a
//! [`FailureLimiter`], one per kind of secret ([`Guessed`]): API tokens
//! (the admin API and the workshop API's bearer tokens), the training
//! portal's credentials at `/oauth2/token/` (client secret, robot password,
//! refresh token), and access links. Each kind is its own table, so that a
//! browser's stale links do not lock an operator's API client behind the
//! same NAT out of the API; a guesser gets one budget per secret it
//! guesses. Only failures count, in a fixed window per address that starts
//! at its first failure; an address past `max_failures` is answered 429
//! with `Retry-After` until its window ends, without its credential being
//! looked at. A success changes nothing, for that address or any other.
//!
//! The table is bounded: an attacker with many addresses must not grow it
//! without end. IPv6 addresses count by their /64 (one host's usual
//! share); when the table is full, addresses without an entry of their own
//! share one overflow entry, so that many addresses together get one more
//! budget, not one each (fail closed: during such an attack, new clients
//! may wait out the window too).
//!
//! One mutex guards the table, held for a hash lookup and never across an
//! `.await`; it is taken only on authentication paths, never by the
//! gateway's proxied requests.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failures an address may make, and over how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureLimits {
    pub max_failures: u32,
    pub window: Duration,
    /// Addresses tracked at once; past it, the overflow entry.
    pub max_clients: usize,
}

impl Default for FailureLimits {
    /// Twenty failures a minute: far more than a person mistyping, far
    /// fewer than a guesser needs (28,800 a day per address).
    fn default() -> Self {
        FailureLimits {
            max_failures: 20,
            window: Duration::from_secs(60),
            max_clients: 65_536,
        }
    }
}

/// The kinds of secret a client can guess, each limited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guessed {
    /// A bearer token: the admin token, a read-only or admin API token, an
    /// OAuth2 access token on the workshop API.
    ApiToken,
    /// `/oauth2/token/`'s client secret, robot password or refresh token.
    PortalCredentials,
    /// An access link's one-time token, opened at the gateway.
    AccessLink,
}

/// A [`FailureLimiter`] for each kind of secret.
#[derive(Debug, Default)]
pub struct FailureLimiters {
    api_token: FailureLimiter,
    portal_credentials: FailureLimiter,
    access_link: FailureLimiter,
}

impl FailureLimiters {
    pub fn new(limits: FailureLimits) -> FailureLimiters {
        FailureLimiters {
            api_token: FailureLimiter::new(limits.clone()),
            portal_credentials: FailureLimiter::new(limits.clone()),
            access_link: FailureLimiter::new(limits),
        }
    }

    /// The limiter of guesses at `secret`.
    pub fn of(&self, secret: Guessed) -> &FailureLimiter {
        match secret {
            Guessed::ApiToken => &self.api_token,
            Guessed::PortalCredentials => &self.portal_credentials,
            Guessed::AccessLink => &self.access_link,
        }
    }
}

/// An address past its budget, and when it may try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyFailures {
    /// Whole seconds until the window ends (at least 1), for `Retry-After`.
    pub retry_after_secs: u64,
}

impl std::fmt::Display for TooManyFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many failed authentications from this address; retry after {} seconds",
            self.retry_after_secs
        )
    }
}

/// One address's failures in its current window.
#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    fn current(&self, now: Instant, window: Duration) -> bool {
        now.duration_since(self.started) < window
    }
}

#[derive(Debug, Default)]
struct Table {
    clients: HashMap<IpAddr, Window>,
    /// Shared by the addresses that found the table full.
    overflow: Option<Window>,
    /// When expired entries were last swept out (at most once a second).
    swept: Option<Instant>,
}

/// Failed authentications per client address; see the module doc.
#[derive(Debug)]
pub struct FailureLimiter {
    limits: FailureLimits,
    table: Mutex<Table>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new(FailureLimits::default())
    }
}

impl FailureLimiter {
    pub fn new(limits: FailureLimits) -> FailureLimiter {
        FailureLimiter {
            limits: FailureLimits {
                max_failures: limits.max_failures.max(1),
                window: limits.window.max(Duration::from_secs(1)),
                max_clients: limits.max_clients.max(1),
            },
            table: Mutex::new(Table::default()),
        }
    }

    /// Whether `client` may present a credential now.
    pub fn check(&self, client: IpAddr) -> Result<(), TooManyFailures> {
        self.check_at(client, Instant::now())
    }

    /// Counts a failed authentication by `client`.
    pub fn fail(&self, client: IpAddr) {
        self.fail_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), TooManyFailures> {
        let key = key(client);
        let table = self.lock();
        let w = match table.clients.get(&key) {
            Some(w) => Some(*w),
            None => table.overflow,
        };
        match w {
            Some(w)
                if w.current(now, self.limits.window) && w.failures >= self.limits.max_failures =>
            {
                let left = self.limits.window - now.duration_since(w.started);
                Err(TooManyFailures {
                    retry_after_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                })
            }
            _ => Ok(()),
        }
    }

    fn fail_at(&self, client: IpAddr, now: Instant) {
        let key = key(client);
        let window = self.limits.window;
        let mut table = self.lock();
        let t = &mut *table;
        if !t.clients.contains_key(&key) && t.clients.len() >= self.limits.max_clients {
            if t.swept
                .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
            {
                t.clients.retain(|_, w| w.current(now, window));
                t.swept = Some(now);
            }
            if t.clients.len() >= self.limits.max_clients {
                count(
                    t.overflow.get_or_insert(Window {
                        started: now,
                        failures: 0,
                    }),
                    now,
                    window,
                );
                return;
            }
        }
        let w = t.clients.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        count(w, now, window);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding it cannot leave the table inconsistent
        // (each update is one assignment), so a poisoned lock is used as is.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Addresses tracked now, for tests.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().clients.len()
    }
}

/// One more failure in `w`, starting a new window if its last one is over.
fn count(w: &mut Window, now: Instant, window: Duration) {
    if !w.current(now, window) {
        *w = Window {
            started: now,
            failures: 0,
        };
    }
    w.failures = w.failures.saturating_add(1);
}

/// The address a client is counted under: IPv4 as is (an IPv4-mapped IPv6
/// address too), IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_failures: u32, max_clients: usize) -> FailureLimiter {
        FailureLimiter::new(FailureLimits {
            max_failures,
            window: Duration::from_secs(60),
            max_clients,
        })
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let l = limiter(3, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(v4(1), t0).is_ok());
            l.fail_at(v4(1), t0);
        }
        let refused = l.check_at(v4(1), t0 + Duration::from_millis(500));
        assert_eq!(
            refused,
            Err(TooManyFailures {
                retry_after_secs: 60
            })
        );
        assert_eq!(
            l.check_at(v4(1), t0 + Duration::from_secs(59)),
            Err(TooManyFailures {
                retry_after_secs: 1
            })
        );
        assert!(
            l.check_at(v4(2), t0).is_ok(),
            "another address is not affected"
        );
        assert!(l.check_at(v4(1), t0 + Duration::from_secs(60)).is_ok());
        l.fail_at(v4(1), t0 + Duration::from_secs(60));
        assert!(
            l.check_at(v4(1), t0 + Duration::from_secs(61)).is_ok(),
            "a new window starts with one failure"
        );
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let l = limiter(2, 10);
        let t0 = Instant::now();
        l.fail_at("2001:db8:1:2::1".parse().unwrap(), t0);
        l.fail_at("2001:db8:1:2:ffff::9".parse().unwrap(), t0);
        assert!(l.check_at("2001:db8:1:2::77".parse().unwrap(), t0).is_err());
        assert!(l.check_at("2001:db8:1:3::1".parse().unwrap(), t0).is_ok());
        l.fail_at("::ffff:10.0.0.9".parse().unwrap(), t0);
        l.fail_at(v4(9), t0);
        assert!(l.check_at(v4(9), t0).is_err());
    }

    #[test]
    fn many_addresses_share_one_overflow_budget_and_the_table_stays_bounded() {
        let l = limiter(2, 4);
        let t0 = Instant::now();
        for last in 0..=255 {
            l.fail_at(v4(last), t0);
        }
        assert_eq!(l.tracked(), 4);
        // The first four have their own entries, one failure each.
        assert!(l.check_at(v4(0), t0).is_ok());
        // Everyone else shares the overflow, long past its budget.
        assert!(l.check_at(v4(200), t0).is_err());
        assert!(l.check_at(IpAddr::from([192, 0, 2, 1]), t0).is_err());
        // Once the windows end, expired entries make room again.
        let later = t0 + Duration::from_secs(61);
        l.fail_at(IpAddr::from([192, 0, 2, 1]), later);
        assert_eq!(l.tracked(), 1);
        assert!(l.check_at(v4(200), later).is_ok());
    }
}
