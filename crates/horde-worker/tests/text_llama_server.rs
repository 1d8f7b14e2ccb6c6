//! The text bridge against a real llama.cpp server: llama-cpp-python's OpenAI-compatible server
//! (`python -m llama_cpp.server`) serving the tiny random llama GGUF of horde-text's fixtures,
//! started by the test on a free port.
//!
//! What it pins: the OpenAI flavour's body reaches llama.cpp with its meaning intact — a greedy
//! job (`temperature: 0`) through the bridge gives exactly the text the built-in engine gives
//! greedily for the same prompt on the same file (horde-text's numbers test holds the two
//! engines' logits together; this holds the bridge's request and answer to it), and a stop
//! sequence is honoured by the server itself (it generates fewer tokens) and cut from the text.
//!
//! Needs the server's Python environment: `.ci/run` runs it with
//! `HORDE_TEST_LLAMA_PYTHON="$(tools/text-fixtures/llama_server.sh)"`.

use horde_api::text::TextParams;
use horde_worker::text::bridge::{Bridge, BridgeApi, TextBridgeConfig};
use horde_worker::text::engine::TextEngine;
use horde_worker::text::{params, TextJob};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "tiny-llama";
/// A prompt whose greedy continuation on the tiny model is mostly letters (with a few byte
/// tokens that are not UTF-8: see [`visible`]).
const PROMPT: &str = "Once upon a time";
const MAX_LENGTH: u32 = 16;

fn gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../horde-text/tests/fixtures/tiny-llama-f16.gguf")
}

/// llama-cpp-python's server, killed when dropped.
struct LlamaServer {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlamaServer {
    fn start(python: &str) -> LlamaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("llama-server.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .arg("--model")
            .arg(gguf())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("HORDE_TEST_LLAMA_PYTHON={python} does not start: {e}"));
        LlamaServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// Waits until `/v1/models` answers (the model is loaded).
    async fn ready(&mut self) {
        let started = Instant::now();
        let http = reqwest::Client::new();
        loop {
            let answer = http.get(format!("{}/v1/models", self.url)).send().await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return;
            }
            let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("llama.cpp's server exited ({status}):\n{}", log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "llama.cpp's server did not answer within 90 s:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The text as llama-cpp-python shows it. The tiny model's vocabulary has byte tokens, and its
/// greedy continuations include bytes that are not UTF-8: llama-cpp-python decodes each
/// completion with `decode("utf-8", errors="ignore")` (llama.py), dropping them, while our
/// engine shows each invalid sequence as U+FFFD (`String::from_utf8_lossy`). So the texts are
/// compared with the U+FFFD removed; the token counts (16 each) show no token was lost.
fn visible(text: &str) -> String {
    text.replace(char::REPLACEMENT_CHARACTER, "")
}

fn job(stop: &[&str]) -> TextJob {
    let params: TextParams = serde_json::from_value(serde_json::json!({
        "max_length": MAX_LENGTH,
        "max_context_length": 128,
        "temperature": 0,
        "stop_sequence": stop,
    }))
    .unwrap();
    TextJob {
        id: "job-1".into(),
        model: MODEL.into(),
        prompt: PROMPT.into(),
        resolved: params::resolve(&params, 1234),
        params,
    }
}

#[tokio::test]
#[ignore = "needs llama.cpp's server: .ci/run runs it with HORDE_TEST_LLAMA_PYTHON"]
async fn the_bridge_gets_the_engines_greedy_text_from_llama_cpp_and_its_stop() {
    let python = std::env::var("HORDE_TEST_LLAMA_PYTHON").expect(
        "llama.cpp's server runs from Python: set \
         HORDE_TEST_LLAMA_PYTHON=\"$(tools/text-fixtures/llama_server.sh)\"",
    );
    let mut server = LlamaServer::start(&python);
    let models = BTreeMap::from([(MODEL.to_string(), gguf())]);
    let (engine, failures) = TextEngine::load(&models, &candle_core::Device::Cpu);
    assert!(failures.is_empty(), "{failures:?}");
    server.ready().await;
    let bridge = Bridge::new(TextBridgeConfig {
        url: server.url.clone(),
        api: BridgeApi::Openai,
        name: MODEL.into(),
        model: None,
        timeout_secs: 60,
    });

    let ours = engine.run(&job(&[])).await.unwrap();
    let theirs = bridge.run(&job(&[])).await.unwrap();
    println!("engine: {:?}\nllama.cpp: {:?}", ours.text, theirs.text);
    assert_eq!(ours.tokens, Some(u64::from(MAX_LENGTH)));
    assert_eq!(theirs.tokens, Some(u64::from(MAX_LENGTH)));
    let ours_text = visible(&ours.text);
    assert_eq!(theirs.text, ours_text, "greedy texts differ");
    let distinct: std::collections::BTreeSet<char> = ours_text.chars().collect();
    assert!(
        distinct.len() >= 4,
        "a degenerate continuation: {ours_text:?}"
    );

    // A stop that first occurs a few characters in: the server stops there (fewer tokens than
    // asked) and neither text keeps the stop.
    let chars: Vec<char> = ours_text.chars().collect();
    let stop: String = chars[4..7].iter().collect();
    let before = &ours_text[..ours_text.find(&stop).unwrap()];
    let ours_stopped = engine.run(&job(&[&stop])).await.unwrap();
    let theirs_stopped = bridge.run(&job(&[&stop])).await.unwrap();
    println!(
        "stop {stop:?}: engine {:?}, llama.cpp {:?} ({:?} tokens)",
        ours_stopped.text, theirs_stopped.text, theirs_stopped.tokens
    );
    assert_eq!(visible(&ours_stopped.text), before);
    assert_eq!(theirs_stopped.text, before);
    assert!(
        theirs_stopped.tokens.unwrap() < u64::from(MAX_LENGTH),
        "llama.cpp did not stop at {stop:?}: {:?} tokens",
        theirs_stopped.tokens
    );
}
