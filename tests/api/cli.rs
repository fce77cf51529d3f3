//! The `callgate` binary's command line: serving without `serve`, one-line client errors,
//! `--version`, and the `healthcheck` subcommand the container image uses.

use std::net::TcpListener;
use std::process::{Command, Output};

use crate::process::CallgateProcess;

fn callgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(args)
        // A backtrace, if anything printed one, would show up with this set.
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run callgate")
}

/// A loopback address nothing listens on (bound, then released).
fn closed_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn version_prints_the_crate_version_and_the_commit_when_known() {
    let out = callgate(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.trim_end();
    let rest = line
        .strip_prefix(&format!("callgate {}", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("unexpected version line {line:?}"));
    if !rest.is_empty() {
        let sha = rest
            .strip_prefix(" (git ")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected build suffix {rest:?}"));
        assert_eq!(sha.len(), 12, "{sha}");
        assert!(sha.chars().all(|c| c.is_ascii_hexdigit()), "{sha}");
    }
}

#[test]
fn connection_errors_of_client_subcommands_are_one_line_and_exit_1() {
    let addr = closed_addr();
    for args in [
        vec!["check", "+919000000000", "+919876543210", "--addr", &addr],
        vec!["watch", "--addr", &addr],
        vec!["healthcheck", "--addr", &addr],
    ] {
        let out = callgate(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("callgate: cannot connect to {addr}: ")),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.to_lowercase().contains("refused"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn serve_flags_work_without_the_subcommand_and_healthcheck_probes_the_port() {
    let app = CallgateProcess::start_with_args(
        &["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
        &[],
    )
    .unwrap();
    let http = app.http.to_string();
    let out = callgate(&["healthcheck", "--addr", &http]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("healthy: http://{http}/healthz answered 200\n")
    );
    // A path that is not 2xx makes the probe fail, with the status in one line.
    let out = callgate(&["healthcheck", "--addr", &http, "--path", "/nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("callgate: http://{http}/nope answered 404\n")
    );
    // Without --addr the probe derives its target from CALLGATE_HTTP_ADDR.
    let out = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .arg("healthcheck")
        .env("CALLGATE_HTTP_ADDR", format!("0.0.0.0:{}", app.http.port()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(app.terminate());
}

#[test]
fn serve_flags_and_a_subcommand_together_are_a_usage_error() {
    let out = callgate(&["--http-addr", "127.0.0.1:0", "check", "1", "2"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The default build has no OTLP exporter: asking for one is said once, and the service runs.
#[cfg(not(feature = "otlp"))]
#[test]
fn otlp_endpoint_without_the_feature_is_a_warning_not_a_failure() {
    let app =
        CallgateProcess::start(&[("CALLGATE_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).unwrap();
    assert!(
        app.log_text()
            .contains("CALLGATE_OTLP_ENDPOINT is set, but this build has no OTLP export"),
        "{}",
        app.log_text()
    );
    assert!(app.terminate());
}
