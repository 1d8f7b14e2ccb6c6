//! The command line as a new user meets it: `horde user create`, and `horde serve` configured by
//! defaults, a TOML file, `HORDE_…` variables and flags.

use crate::helpers::*;
use horde_client::Client;

#[tokio::test]
async fn user_create_prints_a_key_that_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run_horde(
        dir.path(),
        &["user", "create", "alice", "--trusted", "--kudos", "50"],
    );
    assert!(ok, "{stderr}");
    let key = stdout.trim();
    assert_eq!(key.len(), 22, "AI Horde keys are 22 characters: {key:?}");
    assert!(stderr.contains("alice#"), "says who was created: {stderr}");
    let (ok, moderator_key, _) = run_horde(dir.path(), &["user", "create", "mod", "--moderator"]);
    assert!(ok);

    // No config at all: the database lands in the working directory, in WAL mode (unless the
    // suite runs on PostgreSQL, where HORDE_DATABASE__URL sends it to the server instead).
    let server = ServerProcess::start(dir.path(), &["--listen", "127.0.0.1:0"], &[]);
    let on_sqlite = crate::backend::database_for(dir.path()).is_none();
    assert_eq!(dir.path().join("horde.sqlite").exists(), on_sqlite);
    assert_eq!(
        dir.path().join("horde.sqlite-wal").exists(),
        on_sqlite,
        "WAL mode"
    );
    let alice = Client::new(&server.root, key).find_user().await.unwrap();
    assert_eq!(
        (
            alice.username.starts_with("alice#"),
            alice.trusted,
            alice.moderator,
            alice.kudos
        ),
        (true, true, false, 50.0)
    );
    let moderator = Client::new(&server.root, moderator_key.trim())
        .find_user()
        .await
        .unwrap();
    assert!(moderator.moderator);
    let stored = crate::backend::stored_bytes(dir.path()).await;
    assert!(
        !stored.windows(22).any(|w| w == key.as_bytes()),
        "keys are stored only as hashes"
    );
}

#[tokio::test]
async fn serve_listens_where_flags_env_and_toml_say_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (toml_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("horde.toml"),
        format!("listen = \"127.0.0.1:{toml_port}\"\n[api]\ntest_users = true\n"),
    )
    .unwrap();

    let server = ServerProcess::start(dir.path(), &[], &[]);
    assert_eq!(
        server.root,
        format!("http://127.0.0.1:{toml_port}"),
        "./horde.toml is read"
    );
    assert!(
        server.banner[0].contains("listening on"),
        "prints where it listens: {:?}",
        server.banner
    );
    Client::new(&server.root, "0000000000")
        .heartbeat()
        .await
        .unwrap();
    drop(server);

    let env_listen = format!("127.0.0.1:{env_port}");
    let server = ServerProcess::start(dir.path(), &[], &[("HORDE_LISTEN", &env_listen)]);
    assert_eq!(
        server.root,
        format!("http://{env_listen}"),
        "HORDE_LISTEN beats the file"
    );
    drop(server);

    let flag_listen = format!("127.0.0.1:{flag_port}");
    let server = ServerProcess::start(
        dir.path(),
        &["--listen", &flag_listen],
        &[("HORDE_LISTEN", &env_listen)],
    );
    assert_eq!(
        server.root,
        format!("http://{flag_listen}"),
        "--listen beats the environment"
    );
    drop(server);

    std::fs::write(
        dir.path().join("horde.toml"),
        "listen = \"127.0.0.1:0\"\nno_such_setting = 1\n",
    )
    .unwrap();
    let (ok, _, stderr) = run_horde(dir.path(), &["serve"]);
    assert!(!ok);
    assert!(
        stderr.contains("no_such_setting"),
        "a misspelt setting is named: {stderr}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_that_keeps_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let url = "postgres://horde:hunter2@127.0.0.1:1/horde";
    for args in [
        vec!["migrate", "--database", url],
        vec!["serve", "--listen", "127.0.0.1:0", "--database", url],
    ] {
        let (ok, stdout, stderr) = run_horde(dir.path(), &args);
        assert!(!ok, "{args:?} succeeded: {stdout}");
        assert!(
            stderr.contains("Connection refused") || stderr.contains("connection refused"),
            "{args:?} does not say why: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2") && !stdout.contains("hunter2"),
            "{stderr}"
        );
    }
    assert!(
        !dir.path().join("horde.sqlite").exists(),
        "no SQLite file was made instead"
    );
}

#[tokio::test]
async fn model_convert_writes_the_safetensors_of_a_pickled_checkpoint() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../horde-diffusion/tests/fixtures/pickled");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures.join("sd_layout.ckpt"),
        dir.path().join("model.ckpt"),
    )
    .unwrap();
    let (ok, stdout, stderr) = run_horde(dir.path(), &["model", "convert", "model.ckpt"]);
    assert!(ok, "{stderr}");
    let written = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    assert_eq!(
        stdout.trim(),
        format!(
            "converted model.ckpt to model.safetensors: 15 tensors, 3 skipped (epoch (beside \
             state_dict: an int); global_step (beside state_dict: an int); model_ema.* (3 EMA \
             tensors: the engine reads the model's own weights)), 0.0 MB ({} bytes)",
            written.len()
        )
    );
    // What the engine's converter writes, called directly.
    let direct = dir.path().join("direct.safetensors");
    horde_diffusion::pickled::convert_to_safetensors(&dir.path().join("model.ckpt"), &direct)
        .unwrap();
    assert_eq!(written, std::fs::read(&direct).unwrap());

    // --out, and a file that cannot be converted: refused, naming it, writing nothing.
    let (ok, stdout, _) = run_horde(
        dir.path(),
        &[
            "model",
            "convert",
            "model.ckpt",
            "--out",
            "other.safetensors",
        ],
    );
    assert!(
        ok && stdout.contains("to other.safetensors: 15 tensors"),
        "{stdout}"
    );
    let legacy = fixtures.join("legacy.ckpt");
    let (ok, _, stderr) = run_horde(
        dir.path(),
        &[
            "model",
            "convert",
            legacy.to_str().unwrap(),
            "--out",
            "legacy.safetensors",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}: cannot convert to safetensors: is a legacy (pre-1.6) PyTorch file",
            legacy.display()
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("legacy.safetensors").exists());
}
