//! Rollout gates: what must hold while a wave bakes. The ledger keeps each gate as the text
//! an admin gave `pd env set --gate`; this module is the one parser of that text, used by the
//! rule (which refuses a policy with a gate it cannot read) and by whoever evaluates gates.

use std::fmt;
use std::str::FromStr;

/// Longest gate text, in bytes.
pub const MAX_GATE_BYTES: usize = 1024;

/// Most gates one environment may have.
pub const MAX_GATES: usize = 16;

/// One gate.
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    /// `prom:URL?query=Q&max=X` (and/or `&min=Y`): a Prometheus instant query at `URL`
    /// whose value must stay at most `max` (at least `min`). An empty result or NaN is no
    /// answer yet: the bake waits for data (and records nothing if none comes in time).
    Prometheus {
        /// The server's base URL (`http://prom:9090`).
        server: String,
        /// The PromQL expression (`%XX` escapes decoded, so `%26` is `&`).
        query: String,
        /// Highest value that passes.
        max: Option<f64>,
        /// Lowest value that passes.
        min: Option<f64>,
    },
    /// `health`: every target of the waves started so far sent a heartbeat, after its wave
    /// acked, saying its service is healthy (the agent's `--health-url`).
    Health,
    /// `cmd:COMMAND`: run by `sh -c` with `PD_ENV`, `PD_VERSION` and `PD_WAVE` set; exit 0
    /// passes (the seed's post-deploy smoke test).
    Command(String),
}

const FORMS: &str =
    "give `prom:http://HOST:9090?query=EXPR&max=0.01` (and/or &min=), `health`, or `cmd:COMMAND`";

impl FromStr for Gate {
    type Err = String;

    fn from_str(s: &str) -> Result<Gate, String> {
        if s.len() > MAX_GATE_BYTES {
            return Err(format!("gate is {} bytes, over the limit of {MAX_GATE_BYTES}", s.len()));
        }
        if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err("gate contains control characters".into());
        }
        if s == "health" {
            return Ok(Gate::Health);
        }
        if let Some(cmd) = s.strip_prefix("cmd:") {
            if cmd.trim().is_empty() {
                return Err(format!("gate {s:?} names no command: {FORMS}"));
            }
            return Ok(Gate::Command(cmd.to_string()));
        }
        let Some(url) = s.strip_prefix("prom:") else {
            return Err(format!("unknown gate {s:?}: {FORMS}"));
        };
        let (server, params) =
            url.split_once('?').ok_or_else(|| format!("gate {s:?} has no ?query=: {FORMS}"))?;
        let host = server.strip_prefix("http://").or_else(|| server.strip_prefix("https://"));
        if host.is_none_or(|h| h.is_empty() || h.contains(['?', '#', ' '])) {
            return Err(format!("gate {s:?}: the Prometheus server must be an http:// or https:// URL"));
        }
        let (mut query, mut max, mut min) = (None, None, None);
        for param in params.split('&') {
            let (k, v) =
                param.split_once('=').ok_or_else(|| format!("gate {s:?}: {param:?} is not KEY=VALUE"))?;
            let number = || {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("gate {s:?}: {k}={v} is not a number"))
            };
            match k {
                "query" => {
                    query = Some(decode(v).ok_or_else(|| format!("gate {s:?}: bad %-escape in the query"))?)
                }
                "max" => max = Some(number()?),
                "min" => min = Some(number()?),
                _ => return Err(format!("gate {s:?}: unknown parameter {k:?} (query, max, min)")),
            }
        }
        let query = query
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| format!("gate {s:?} has no query: {FORMS}"))?;
        if max.is_none() && min.is_none() {
            return Err(format!("gate {s:?} has no threshold: add &max=… or &min=…"));
        }
        Ok(Gate::Prometheus { server: server.trim_end_matches('/').to_string(), query, max, min })
    }
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

impl Gate {
    /// Whether a measured value passes a Prometheus gate's bounds.
    pub fn within(max: Option<f64>, min: Option<f64>, value: f64) -> bool {
        value.is_finite() && max.is_none_or(|m| value <= m) && min.is_none_or(|m| value >= m)
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Health => f.write_str("health"),
            Gate::Command(c) => write!(f, "cmd:{c}"),
            Gate::Prometheus { server, query, max, min } => {
                let query = query.replace('%', "%25").replace('&', "%26");
                write!(f, "prom:{server}?query={query}")?;
                if let Some(m) = max {
                    write!(f, "&max={m}")?;
                }
                if let Some(m) = min {
                    write!(f, "&min={m}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_round_trips() {
        let g: Gate = "prom:http://prom:9090?query=sum(rate(http_errors_total[1m]))/sum(rate(http_requests_total[1m]))&max=0.01"
            .parse()
            .unwrap();
        let Gate::Prometheus { server, query, max, min } = &g else { panic!("{g:?}") };
        assert_eq!(server, "http://prom:9090");
        assert_eq!(query, "sum(rate(http_errors_total[1m]))/sum(rate(http_requests_total[1m]))");
        assert_eq!((*max, *min), (Some(0.01), None));
        assert_eq!(g.to_string().parse::<Gate>().unwrap(), g);
        let amp: Gate = "prom:https://p/?query=a%26b%2525&min=1".parse().unwrap();
        assert!(
            matches!(&amp, Gate::Prometheus { query, server, .. } if query == "a&b%25" && server == "https://p")
        );
        assert_eq!(amp.to_string().parse::<Gate>().unwrap(), amp);
        assert_eq!("health".parse::<Gate>().unwrap(), Gate::Health);
        assert_eq!(
            "cmd:./smoke.sh --fast".parse::<Gate>().unwrap(),
            Gate::Command("./smoke.sh --fast".into())
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for (bad, says) in [
            ("prom:http://p?query=up", "no threshold"),
            ("prom:http://p?max=1", "no query"),
            ("prom:ftp://p?query=up&max=1", "http:// or https://"),
            ("prom:http://p?query=up&max=lots", "not a number"),
            ("prom:http://p?query=up&max=NaN", "not a number"),
            ("prom:http://p?query=up&step=1&max=1", "unknown parameter"),
            ("prom:http://p?query=%zz&max=1", "%-escape"),
            ("cmd:  ", "no command"),
            ("smoke", "unknown gate"),
            ("health\n", "control characters"),
        ] {
            let e = bad.parse::<Gate>().unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!("cmd:".repeat(300).parse::<Gate>().unwrap_err().contains("over the limit"));
    }

    #[test]
    fn bounds() {
        assert!(Gate::within(Some(0.01), None, 0.01));
        assert!(!Gate::within(Some(0.01), None, 0.02));
        assert!(!Gate::within(None, Some(1.0), 0.5));
        assert!(!Gate::within(Some(1.0), None, f64::NAN));
    }
}
