//! The live console: one page served at `/`, and the figures it polls at `/console/data`.
//!
//! The page (`console/index.html`, `console.js`, `console.css`) is compiled into the
//! binary and makes no request but to this listener: no CDN, no web font, no build step,
//! so it works on a host without internet access. Its content security policy forbids
//! anything else, so a mistake cannot reach out either. It polls `/console/data` every two
//! seconds and `/keyspace` every ten, keeps the last five minutes of figures in the browser
//! and draws them; the proxy keeps no history for it.
//!
//! `/console/data` is computed from what already exists: the status report
//! ([`Control::status`]), the guards' rules as TOML ([`Control::rules_toml`]), and the
//! guard decision counters (`respguard_guard_decisions_total`) read back from the
//! Prometheus recorder. Without `admin.metrics` there is no recorder, and the decisions
//! and the command count are `null`.
//!
//! [`Control::status`]: crate::control::Control::status
//! [`Control::rules_toml`]: crate::control::Control::rules_toml

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::json;

use super::state::{json, Shared};

/// The page.
const INDEX_HTML: &str = include_str!("console/index.html");
/// Its script.
const CONSOLE_JS: &str = include_str!("console/console.js");
/// Its style sheet.
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// What the page may load: its own script, style sheet and data, nothing else.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The most decision rows `/console/data` lists (one per rule and action; a configuration
/// has far fewer).
pub const MAX_DECISIONS: usize = 512;

/// The console's routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route("/console/data", get(data))
}

/// One of the page's files, with the content security policy.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Every file the console serves, by path (for the test that no file names another host).
pub fn assets() -> [(&'static str, &'static str); 3] {
    [
        ("/", INDEX_HTML),
        ("/console/console.js", CONSOLE_JS),
        ("/console/console.css", CONSOLE_CSS),
    ]
}

/// `/console/data`: the figures of this moment.
async fn data(State(state): State<Shared>) -> Response {
    let status = state.control.status();
    let decisions = state.prometheus.as_ref().map(|_| {
        let mut text = String::new();
        crate::guard::decisions::render(&mut text);
        decisions(&text, MAX_DECISIONS)
    });
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json(&json!({
        "unix_ms": unix_ms,
        "version": status["version"],
        "uptime_seconds": status["uptime_seconds"],
        "config": status["config"],
        "upstream": status["upstream"],
        "memory": status["memory"],
        "clients": status["clients"],
        "commands_answered": status["commands_answered"],
        "decisions": decisions,
        "top_refused_clients": status["top_refused_clients"],
        "rules_toml": state.control.rules_toml(),
    }))
}

/// One guard decision counter: how often a rule's guard took one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The guard (`size`, `shed`, `queue`, `enqueue`, `ttl`, `fail_open`).
    pub guard: String,
    /// The rule's name.
    pub rule: String,
    /// What it did (`refused`, `drop`, `ttl_added`, ...).
    pub action: String,
    /// `enforce` or `observe`.
    pub mode: String,
    /// How many times, since the start.
    pub count: u64,
}

/// The `respguard_guard_decisions_total` series of a Prometheus text exposition, at most
/// `limit` of them, sorted by guard, rule, action and mode.
pub fn decisions(text: &str, limit: usize) -> Vec<Decision> {
    let mut all: Vec<Decision> = text
        .lines()
        .filter_map(|l| l.strip_prefix("respguard_guard_decisions_total{"))
        .filter_map(decision)
        .take(limit)
        .collect();
    all.sort_by(|a, b| {
        (&a.guard, &a.rule, &a.action, &a.mode).cmp(&(&b.guard, &b.rule, &b.action, &b.mode))
    });
    all
}

/// One series after its metric name's `{`: `guard="size",rule="r",...} 3`.
fn decision(series: &str) -> Option<Decision> {
    let (labels, value) = series.rsplit_once("} ")?;
    let mut d = Decision {
        guard: String::new(),
        rule: String::new(),
        action: String::new(),
        mode: String::new(),
        count: value.trim().parse::<f64>().ok()? as u64,
    };
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let (value, after) = label_value(after)?;
        match name {
            "guard" => d.guard = value,
            "rule" => d.rule = value,
            "action" => d.action = value,
            "mode" => d.mode = value,
            _ => {}
        }
        rest = after.strip_prefix(',').unwrap_or(after);
    }
    Some(d)
}

/// A label value up to its closing quote, unescaped (`\\`, `\"`, `\n`), and what follows.
fn label_value(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_read_back_from_the_exposition_with_escapes_and_a_bound() {
        let text = "# TYPE respguard_guard_decisions_total counter\n\
            respguard_guard_decisions_total{guard=\"ttl\",rule=\"cache:*\",action=\"ttl_added\",mode=\"observe\"} 12\n\
            respguard_guard_decisions_total{guard=\"size\",rule=\"big\\\"one\\\\\",action=\"refused\",mode=\"enforce\"} 7\n\
            respguard_commands_total 40\n";
        let all = decisions(text, 10);
        assert_eq!(
            all,
            vec![
                Decision {
                    guard: "size".into(),
                    rule: "big\"one\\".into(),
                    action: "refused".into(),
                    mode: "enforce".into(),
                    count: 7,
                },
                Decision {
                    guard: "ttl".into(),
                    rule: "cache:*".into(),
                    action: "ttl_added".into(),
                    mode: "observe".into(),
                    count: 12,
                },
            ]
        );
        assert_eq!(decisions(text, 1).len(), 1, "at most `limit` rows");
        assert_eq!(
            decisions(text, 1)[0].guard,
            "ttl",
            "the first `limit` of the exposition"
        );
    }

    #[test]
    fn decisions_the_guards_count_are_read_back_from_their_rendering() {
        let count = crate::guard::decisions::DecisionCount::of(
            "enqueue",
            "console \"q\"\\",
            "drop",
            "observe",
        );
        count.increment();
        count.increment();
        count.increment();
        let mut text = String::new();
        crate::guard::decisions::render(&mut text);
        let read = decisions(&text, usize::MAX);
        let found = read
            .iter()
            .find(|d| d.guard == "enqueue" && d.rule == "console \"q\"\\")
            .expect("the count is rendered");
        assert_eq!(
            (found.action.as_str(), found.mode.as_str(), found.count),
            ("drop", "observe", 3)
        );
    }
}
