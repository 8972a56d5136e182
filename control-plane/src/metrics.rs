//! The control plane's Prometheus metrics. One registry per process (not the
//! global default), so tests can run several servers side by side.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reaper_actions: IntCounterVec,
    table_swap_seconds: HistogramVec,
    sessions: IntGaugeVec,
    tls_handshakes: IntCounterVec,
    certificate_expiry: IntGaugeVec,
    on_demand: IntCounterVec,
    acme: IntCounterVec,
    oidc: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A gateway's own (`sessiongate gateway`): its TLS handshakes and
    /// certificates, none of the control plane's series.
    pub fn for_gateway() -> Self {
        Self::build(true)
    }

    fn build(gateway_only: bool) -> Self {
        let registry = Registry::new();
        let reaper_actions = IntCounterVec::new(
            Opts::new(
                "sessiongate_reaper_actions_total",
                "Sessions the lifecycle reaper acted on, by action.",
            ),
            &["action"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let table_swap_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sessiongate_route_table_swap_seconds",
                "Time to apply a change to the gateway's route table.",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25,
            ]),
            &[],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let sessions = IntGaugeVec::new(
            Opts::new("sessiongate_sessions", "Sessions in the store, by state."),
            &["state"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "sessiongate_tls_handshakes_total",
                "TLS handshakes on the HTTPS listener, by result (ok or failed).",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "sessiongate_certificate_expiry_timestamp_seconds",
                "When each loaded certificate expires (notAfter), in Unix seconds, by pair name.",
            ),
            &["name"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let on_demand = IntCounterVec::new(
            Opts::new(
                "sessiongate_tls_on_demand_certificates_total",
                "Leaves for served names from the development CA (tls.on_demand_dev), by result: \
                 issued, or rate_limited (a new name refused by the issuance rate limit).",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let acme = IntCounterVec::new(
            Opts::new(
                "sessiongate_tls_acme_certificates_total",
                "ACME orders ([tls.acme]), first certificates and renewals, by result: issued, \
                 failed (the log names the CA's reason; the current certificate keeps serving), \
                 or rate_limited (a new on-demand name refused by the order rate limit).",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let oidc = IntCounterVec::new(
            Opts::new(
                "sessiongate_oidc_sign_ins_total",
                "OpenID Connect sign-ins ([oidc]) by result: ok, forbidden (not the session's owner \
                 or a member, or not an allowed domain), refused (state, code or provider error), \
                 invalid_token (the ID token failed verification), provider_unavailable, bad_request.",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let mut collectors = vec![
            Box::new(oidc.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tls_handshakes.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(on_demand.clone()),
            Box::new(acme.clone()),
        ];
        if !gateway_only {
            collectors.extend([
                Box::new(reaper_actions.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(table_swap_seconds.clone()),
                Box::new(sessions.clone()),
            ]);
        }
        for c in collectors {
            let _ = registry.register(c);
        }
        // Every action shows up at 0 before the first one happens.
        for a in [
            "delete_unactivated",
            "expire",
            "expire_idle",
            "expire_evicted",
            "purge",
        ] {
            reaper_actions.with_label_values(&[a]);
        }
        for r in ["ok", "failed"] {
            tls_handshakes.with_label_values(&[r]);
        }
        for r in ["issued", "rate_limited"] {
            on_demand.with_label_values(&[r]);
        }
        for r in ["issued", "failed", "rate_limited"] {
            acme.with_label_values(&[r]);
        }
        for r in [
            "ok",
            "forbidden",
            "refused",
            "invalid_token",
            "provider_unavailable",
            "bad_request",
        ] {
            oidc.with_label_values(&[r]);
        }
        Metrics {
            registry,
            reaper_actions,
            table_swap_seconds,
            sessions,
            tls_handshakes,
            certificate_expiry,
            on_demand,
            acme,
            oidc,
        }
    }

    /// Brings the on-demand certificate counters up to what `resolver`'s
    /// issuer counted (it keeps its own totals; these only ever grow).
    pub fn observe_on_demand(&self, resolver: Option<&certs::SniResolver>) {
        let Some(resolver) = resolver else {
            return;
        };
        for source in resolver.on_demand() {
            let n = source.counts();
            let (vec, results) = match source.kind() {
                "acme" => (
                    &self.acme,
                    &[
                        ("issued", n.issued),
                        ("failed", n.failed),
                        ("rate_limited", n.rate_limited),
                    ][..],
                ),
                _ => (
                    &self.on_demand,
                    &[("issued", n.issued), ("rate_limited", n.rate_limited)][..],
                ),
            };
            for (result, total) in results {
                let c = vec.with_label_values(&[result]);
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
    }

    pub fn count_oidc_sign_in(&self, result: &str) {
        self.oidc.with_label_values(&[result]).inc();
    }

    pub fn count_tls_handshake(&self, ok: bool) {
        self.tls_handshakes
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// Replaces the certificate expiry series with these `(name, notAfter)`.
    pub fn set_certificates(&self, certs: impl IntoIterator<Item = (String, i64)>) {
        self.certificate_expiry.reset();
        for (name, not_after) in certs {
            self.certificate_expiry
                .with_label_values(&[&name])
                .set(not_after);
        }
    }

    pub fn count_reaper(&self, action: &str, n: usize) {
        self.reaper_actions
            .with_label_values(&[action])
            .inc_by(n as u64);
    }

    pub fn reaper_count(&self, action: &str) -> u64 {
        self.reaper_actions.with_label_values(&[action]).get()
    }

    pub fn observe_table_swap(&self, d: Duration) {
        self.table_swap_seconds
            .with_label_values(&[] as &[&str])
            .observe(d.as_secs_f64());
    }

    pub fn set_sessions(&self, state: &str, n: u64) {
        self.sessions
            .with_label_values(&[state])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
