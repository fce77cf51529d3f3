//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed, and stamps the
//! build: `CALLGATE_BUILD_VERSION` is the crate version plus the git commit when one is known
//! (`CALLGATE_GIT_SHA` from the environment, as a container build passes it, else `git`).

use std::process::Command;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/callgate/v1/callgate.proto"];
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Kept for gRPC reflection.
    std::fs::write(
        out_dir.join("callgate_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    stamp_version();
    Ok(())
}

/// Sets `CALLGATE_BUILD_VERSION` ("0.1.0" or "0.1.0 (git 0123456789ab)").
fn stamp_version() {
    println!("cargo:rerun-if-env-changed=CALLGATE_GIT_SHA");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let sha = std::env::var("CALLGATE_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().to_owned())
        .or_else(git_sha);
    let build = match sha {
        Some(sha) => format!("{version} (git {sha})"),
        None => version,
    };
    println!("cargo:rustc-env=CALLGATE_BUILD_VERSION={build}");
}

/// The checked-out commit, if this is a git checkout and `git` is installed. Rebuilds when the
/// commit moves (HEAD, or the branch it points to).
fn git_sha() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let sha = git(&["rev-parse", "--short=12", "HEAD"])?;
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(sha)
}
