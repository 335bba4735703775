//! Every guard, with rules for each, on arbitrary client bytes (`respguard::offline`): no
//! panic, every rewrite is whole commands in the announced number, every local answer one
//! whole reply, and what a guard writes stays within a bound of the command's size. Memory
//! pressure is at the hard level so the shed guard acts too. The keyspace insight observes
//! every command, with summaries small enough to evict, and its report stays in bounds.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use respguard::command::CommandTable;
use respguard::config::{RawConfig, RawKeyspace};
use respguard::guard::{GuardContext, Guards};
use respguard::identity::ClientIdentity;
use respguard::keyspace::insight::Insight;
use respguard::pressure::LimitSource;
use respguard::scanner::request::Limits;

const RULES: &str = r#"
[guards.enqueue]
max_fingerprints = 4096
max_buckets = 256
max_scripts = 16
[[guards.enqueue.rules]]
preset = "sidekiq"
action = "drop"
[[guards.enqueue.rules]]
preset = "celery"
action = "reject"
[[guards.enqueue.rules]]
preset = "rq"
action = "drop"
[[guards.enqueue.rules]]
preset = "bullmq"
action = "drop"
[[guards.enqueue.rules]]
preset = "generic"
name = "generic"
pattern = "jobs:*"
commands = ["LPUSH", "RPUSH", "ZADD", "XADD"]
field = "payload"
exclude = ["/id"]
job_id = "/id"
rate = 5
burst = 5
[[guards.size.rules]]
pattern = "big:*"
max_value = "16B"
max_elements = 4
[[guards.size.rules]]
pattern = "*"
max_value = "4KiB"
[[guards.ttl.rules]]
pattern = "session:*"
ttl = "none"
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"
max_ttl = "1d"
commands = ["LPUSH", "SADD", "INCR", "ZADD", "XADD"]
[[guards.shed.rules]]
pattern = "critical:*"
priority = "critical"
[[guards.shed.rules]]
pattern = "low:*"
priority = "low"
[[guards.queue.rules]]
pattern = "queue:*"
max_depth = 10
"#;

fn setup() -> &'static (Guards, CommandTable, Insight) {
    static SETUP: OnceLock<(Guards, CommandTable, Insight)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let raw = RawConfig::from_toml(RULES).expect("fuzz rules");
        let table = CommandTable::builtin();
        let context = GuardContext::new(&raw.guards);
        context
            .pressure
            .record_poll(95, 100, LimitSource::MaxMemory, true, 0);
        let guards = Guards::build(&raw.guards, &table, &context).expect("fuzz rules build");
        // The keyspace insight observes every command, with small summaries that evict.
        let keyspace = RawKeyspace {
            sample_rate: 1,
            max_prefixes: 8,
            hot_keys: 2,
            ..RawKeyspace::default()
        };
        let insight = Insight::build(&keyspace, &table).expect("insight enabled");
        (guards, table, insight)
    })
}

fuzz_target!(|data: &[u8]| {
    let (guards, table, insight) = setup();
    let client = ClientIdentity::new("10.0.0.1:4000".parse().unwrap());
    let limits = Limits {
        stream_threshold: 1024,
        max_buffered_command: 4096,
        ..Limits::default()
    };
    let observed =
        respguard::offline::judge_observed(guards, table, limits, &client, data, Some(insight));
    if let Err(broken) = observed {
        panic!("{broken}");
    }
    let report = insight.report();
    assert!(report.tracked_prefixes <= 8 && report.hot_keys.len() <= 2);
});
