//! The load harness cannot rot: `horde bench --smoke` runs every scenario for half a second
//! against coordinators it launches (on SQLite; and two sharing PostgreSQL), and every call it
//! made must have been answered as expected. (Its figures are for BENCHMARKS.md, never
//! asserted: these machines are noisy.)

#[test]
fn horde_bench_smoke_runs_every_scenario_without_errors() {
    check_smoke_run(&["bench", "--smoke"]);
}

#[test]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
fn horde_bench_smoke_runs_against_two_coordinators_on_postgresql() {
    let server = crate::backend::postgres_server().expect("needs HORDE_TEST_POSTGRES_URL");
    check_smoke_run(&[
        "bench",
        "--smoke",
        "--postgres",
        &server,
        "--coordinators",
        "2",
    ]);
}

fn check_smoke_run(args: &[&str]) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_horde"))
        .args(args)
        .output()
        .expect("horde bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for scenario in [
        "heartbeat",
        "pop-empty",
        "async c=",
        "pop-queued q=50",
        "pop-queued q=500",
        "pop-workers w=10,",
        "pop-workers w=100,",
        "mixed",
    ] {
        assert!(stdout.contains(scenario), "{scenario} missing:\n{stdout}");
    }
    let mut endpoint_lines = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let endpoint = ["heartbeat", "pop", "async", "check", "submit"];
        if fields.len() == 7 && endpoint.contains(&fields[0]) {
            endpoint_lines += 1;
            let ok: u64 = fields[1].parse().unwrap();
            let errors: u64 = fields[2].parse().unwrap();
            assert!(ok > 0 && errors == 0, "{line}\n{stdout}");
        }
    }
    assert!(endpoint_lines >= 13, "{stdout}");
    let ratios = stdout.split("ratios").nth(1).expect("a ratios section");
    // The seven ratios of issue 8, async ÷ heartbeat taken three ways.
    assert_eq!(
        ratios.lines().filter(|l| l.contains("target")).count(),
        8,
        "{stdout}"
    );
}
