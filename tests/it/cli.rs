//! The command line: `check-config`, and the precedence flag > environment > file.

use std::process::Command;

fn respguard(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_respguard"))
        .args(args)
        .env_remove("RESPGUARD_LISTEN")
        .env_remove("RESPGUARD_UPSTREAM")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");

#[test]
fn check_config_accepts_the_example_and_prints_the_effective_configuration() {
    let (ok, out, err) = respguard(&["check-config", EXAMPLE], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("is valid"), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:6380\""), "{out}");
    assert!(out.contains("drain_timeout = \"5s\""), "{out}");
}

/// `check-config FILE | head` must not panic when the reader stops early: stdout is a pipe
/// whose reading end is closed before the proxy starts (so the write fails with EPIPE
/// every time, not only when the reader happens to be faster).
#[test]
fn check_config_into_a_closed_pipe_is_not_a_crash() {
    let script = "import os, subprocess, sys\n\
                  r, w = os.pipe()\n\
                  os.close(r)\n\
                  p = subprocess.run(sys.argv[1:], stdout=w, stderr=subprocess.PIPE)\n\
                  sys.stderr.buffer.write(p.stderr)\n\
                  sys.exit(p.returncode)\n";
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            env!("CARGO_BIN_EXE_respguard"),
            "check-config",
            EXAMPLE,
        ])
        .output()
        .expect("python3 runs the pipe check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_config_names_the_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[proxy]\nmax_clinets = 10\n").unwrap();
    let (ok, _, err) = respguard(&["check-config", bad.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("max_clinets"), "{err}");
    std::fs::write(
        &bad,
        "[upstream]\nurl = \"rediss://h:1\"\n[upstream.tls]\nca_file = \"/nonexistent/ca.pem\"\n",
    )
    .unwrap();
    let (ok, _, err) = respguard(&["check-config", bad.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(
        err.contains("upstream.tls") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let env = [
        ("RESPGUARD_LISTEN", "127.0.0.1:7001"),
        ("RESPGUARD_UPSTREAM", "redis://envhost:1"),
    ];
    let (ok, out, err) = respguard(&["check-config", EXAMPLE], &env);
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:7001\""), "{out}");
    assert!(out.contains("url = \"redis://envhost:1\""), "{out}");
    let (ok, out, err) = respguard(
        &["--listen", "127.0.0.1:7002", "check-config", EXAMPLE],
        &env,
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:7002\""), "{out}");
}

#[test]
fn a_bad_value_refuses_to_start_and_names_the_key() {
    let (ok, _, err) = respguard(&["--upstream", "redis://h/notadb"], &[]);
    assert!(!ok);
    assert!(err.contains("upstream.url"), "{err}");
}

#[test]
fn check_config_names_the_job_libraries_a_catch_all_ttl_rule_leaves_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ttl.toml");
    let rules = "[[guards.ttl.rules]]\npattern = \"cache:*\"\nttl = \"1h\"\n\
                 [[guards.ttl.rules]]\npattern = \"*\"\nttl = \"1d\"\n";
    std::fs::write(&file, rules).unwrap();
    let (ok, out, err) = respguard(&["check-config", file.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    let notes: Vec<&str> = out.lines().filter(|l| l.starts_with("# note: ")).collect();
    assert_eq!(notes.len(), 1, "one note, for `*` only: {out}");
    let note = notes[0];
    assert!(
        note.contains("ttl rule `*` would cover job-library keys"),
        "{note}"
    );
    for library in respguard::guard::library::LIBRARIES {
        let first = library.patterns[0].as_bytes().escape_ascii().to_string();
        assert!(
            note.contains(&format!("{} ({first}", library.name)),
            "{} missing: {note}",
            library.name
        );
    }
    // The output stays a configuration: the note is a comment, and the file checks again.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &out).unwrap();
    let (ok, _, err) = respguard(&["check-config", again.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    // A rule that names its keys gets no note.
    std::fs::write(
        &file,
        "[[guards.ttl.rules]]\npattern = \"cache:*\"\nttl = \"1h\"\n",
    )
    .unwrap();
    let (ok, out, err) = respguard(&["check-config", file.to_str().unwrap()], &[]);
    assert!(ok && !out.contains("# note:"), "{out}{err}");
}
