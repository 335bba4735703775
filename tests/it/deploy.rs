//! The deployment examples in `deploy/`: every YAML and JSON file parses, every respguard
//! configuration in them is valid, every respguard metric they use is one the proxy
//! exports, and the alert rules pass `promtool check rules`.

use std::path::{Path, PathBuf};

use respguard::config::RawConfig;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn deploy_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    files(&root().join("deploy"), &mut out);
    out.sort();
    out
}

/// Check a respguard configuration from the examples. Certificate files and the system's
/// CA store belong to the deployment, not this machine: TLS is left out of the check.
fn check_config(text: &str, origin: &Path) {
    let mut raw = RawConfig::from_toml(text)
        .unwrap_or_else(|e| panic!("{}: respguard.toml: {e}", origin.display()));
    raw.proxy.tls = Default::default();
    raw.upstream.url = raw.upstream.url.replace("rediss://", "redis://");
    raw.validate()
        .unwrap_or_else(|e| panic!("{}: respguard.toml: {e}", origin.display()));
}

#[test]
fn every_example_file_parses_and_every_config_in_them_is_valid() {
    let mut configs = 0;
    let mut yaml_documents = 0;
    for path in deploy_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                for doc in serde_yaml::Deserializer::from_str(&text) {
                    let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    yaml_documents += 1;
                    // ConfigMaps and Secrets carry respguard.toml.
                    for key in ["data", "stringData"] {
                        if let Some(toml) = value[key]["respguard.toml"].as_str() {
                            check_config(toml, &path);
                            configs += 1;
                        }
                    }
                }
            }
            Some("json") => {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            Some("toml") => {
                check_config(&text, &path);
                configs += 1;
            }
            _ => panic!("{}: an example of an unknown kind", path.display()),
        }
    }
    assert_eq!(
        configs, 3,
        "the sidecar, central and compose configurations"
    );
    assert!(yaml_documents >= 10, "{yaml_documents} YAML documents");
}

#[test]
fn every_metric_the_examples_use_is_exported() {
    let mut source = String::new();
    let mut src = Vec::new();
    files(&root().join("src"), &mut src);
    for f in src {
        source.push_str(&std::fs::read_to_string(f).unwrap());
    }
    let mut checked = 0;
    for path in deploy_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("respguard_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name.as_str(), |n, suffix| {
                    n.strip_suffix(suffix).unwrap_or(n)
                });
            if base == "respguard_" || !base.contains('_') {
                continue;
            }
            assert!(
                source.contains(&format!("\"{base}")),
                "{} uses {name}, which the proxy does not export",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} metric uses found");
}

#[test]
fn alert_rules_pass_promtool() {
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(root().join("deploy/prometheus/alerts.yml"))
        .output()
    else {
        // scripts/install-test-deps.sh installs it (Debian's `prometheus`); without it
        // the YAML is still parsed by the test above.
        eprintln!("promtool is not installed: alert rules not checked by promtool");
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 10 rules found"));
}
