//! Compatibility with a client no one here wrote: the Python `horde-sdk` from PyPI drives one
//! image request as a client and as a worker, base64 and R2, and one text request (async, pop,
//! submit, status, cancel) and one interrogation (a caption form: async, pop, the source
//! downloaded, submit, status, cancel), against the real `horde` binary;
//! then every endpoint's answer is parsed by the SDK's response models, in its normal mode and
//! in its strict mode (unknown fields forbidden but for our documented additions).
//! `compat/horde_sdk/setup.sh` installs the pinned SDK into a venv (`.ci/run` runs it first).
//! On PostgreSQL when the suite runs there.

#[test]
fn horde_sdk_drives_a_full_image_request() {
    // Where cargo runs the test from (a shared target directory may hold a binary built in a
    // clone at another path).
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let script = std::path::Path::new(&dir).join("../../compat/horde_sdk/against_server.sh");
    // On PostgreSQL (HORDE_TEST_POSTGRES_URL) the script's coordinator gets a database of its
    // own there; it reads HORDE_DATABASE__URL as an operator's would.
    let database_key = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new("bash");
    if let Some(url) = crate::backend::database_for(database_key.path()) {
        command.env("HORDE_DATABASE__URL", url);
    }
    let output = command
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_horde"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "horde-sdk round trip failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout
            .matches("PASSED: one image request round-tripped through horde-sdk")
            .count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("r2=False") && stdout.contains("r2=True"));
    assert!(
        stdout.contains("PASSED: one text request round-tripped through horde-sdk"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASSED: one interrogation round-tripped through horde-sdk"),
        "{stdout}"
    );
    for mode in ["normal", "strict"] {
        let passed = format!("PASSED: every endpoint parsed by horde-sdk in {mode} mode");
        assert!(stdout.contains(&passed), "{stdout}");
    }
}
