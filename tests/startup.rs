//! `tailor run` refuses to start, with the reason and exit code 1, when its HTTP port is taken
//! (the port is bound before the worker connects to Kafka, so no broker is needed).

mod common;

use std::process::Command;

use common::*;

#[test]
fn a_taken_http_port_is_a_clear_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("tailor-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tailor.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:9\"\n[state]\npath = \"{}\"\n[segments]\nfile = \"{}/examples/segments.yaml\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.join("state").display(),
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("binding http.listen 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}
