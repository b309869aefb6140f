//! Integration tests of the supervisor against real processes.
//!
//! This binary is also the monitor program: run as `it __monitor ARGS…` it calls
//! `supervisor::monitor_main`, as the `flowers` binary does. Otherwise it runs the tests below
//! one after another (a name given on the command line runs only the tests containing it).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use domain::ExitStatus;
use futures::StreamExt;
use supervisor::{
    group_members, is_alive, logs, pick_free_port, probe_http, process_start_ticks,
    read_exit_status, stop_group, LaunchSpec, ProcessHandle, RunProcess, StopOutcome, Supervisor,
    SupervisorError,
};

const MONITOR_SUBCOMMAND: &str = "__monitor";
/// Generous bound for anything that should take milliseconds on an idle machine.
const PATIENCE: Duration = Duration::from_secs(20);

type TestFn = fn();

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == MONITOR_SUBCOMMAND) {
        supervisor::monitor_main(args[2..].to_vec());
    }
    let tests: &[(&str, TestFn)] = &[
        (
            "spawn_passes_env_and_reports_the_exit_code",
            spawn_passes_env_and_reports_the_exit_code,
        ),
        (
            "a_signal_ends_the_command_with_128_plus_n",
            a_signal_ends_the_command_with_128_plus_n,
        ),
        (
            "both_streams_land_in_one_log_in_order",
            both_streams_land_in_one_log_in_order,
        ),
        (
            "rotation_keeps_every_byte_and_whole_lines",
            rotation_keeps_every_byte_and_whole_lines,
        ),
        (
            "rotation_drops_only_beyond_keep",
            rotation_drops_only_beyond_keep,
        ),
        (
            "stop_kills_a_group_that_ignores_sigterm",
            stop_kills_a_group_that_ignores_sigterm,
        ),
        (
            "stop_terminates_a_group_that_obeys_sigterm",
            stop_terminates_a_group_that_obeys_sigterm,
        ),
        (
            "a_new_supervisor_adopts_a_running_monitor",
            a_new_supervisor_adopts_a_running_monitor,
        ),
        (
            "dead_or_reused_handles_are_not_adopted_or_signalled",
            dead_or_reused_handles_are_not_adopted_or_signalled,
        ),
        (
            "commands_that_cannot_start_say_why",
            commands_that_cannot_start_say_why,
        ),
        ("an_empty_command_is_refused", an_empty_command_is_refused),
        (
            "probe_passes_against_a_server_and_fails_when_it_is_gone",
            probe_passes_against_a_server_and_fails_when_it_is_gone,
        ),
        (
            "killing_the_monitor_kills_the_command",
            killing_the_monitor_kills_the_command,
        ),
        (
            "follow_streams_a_live_run_across_rotations",
            follow_streams_a_live_run_across_rotations,
        ),
    ];
    if args.iter().any(|arg| arg == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let filters: Vec<String> = args[1..]
        .iter()
        .filter_map(|arg| arg.to_str())
        .filter(|arg| !arg.starts_with('-'))
        .map(str::to_string)
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|filter| name.contains(filter.as_str())) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(test));
        let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
        println!(
            "test {name} ... {verdict} ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(1);
    }
}

// ---- helpers -------------------------------------------------------------------------------

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn supervisor() -> Supervisor {
    Supervisor::new(vec![
        std::env::current_exe().unwrap().into_os_string(),
        MONITOR_SUBCOMMAND.into(),
    ])
}

fn launch(dir: &Path, command: &[&str]) -> LaunchSpec {
    LaunchSpec {
        run_id: "test-1".to_string(),
        command: command.iter().map(|part| part.to_string()).collect(),
        workdir: None,
        env: Vec::new(),
        run_dir: dir.join("run"),
        log_max_bytes: 1024 * 1024,
        log_keep: 3,
    }
}

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

/// Polls `condition` every 20 ms until it holds, failing the test after [`PATIENCE`].
async fn eventually<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_bounded(run: &mut RunProcess) -> ExitStatus {
    tokio::time::timeout(PATIENCE, run.wait())
        .await
        .expect("the Run should have exited")
}

fn log_text(run_dir: &Path) -> String {
    fs::read_to_string(logs::current_log(run_dir)).unwrap_or_default()
}

async fn log_line_with(run_dir: &Path, prefix: &str) -> String {
    eventually(&format!("a log line starting with {prefix:?}"), || {
        log_text(run_dir)
            .lines()
            .find_map(|line| line.strip_prefix(prefix).map(str::to_string))
    })
    .await
}

fn handle_of(pid: u32) -> ProcessHandle {
    ProcessHandle {
        pid,
        start_ticks: process_start_ticks(pid).expect("process should exist"),
    }
}

fn numbered_lines(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|i| format!("{i:06} {}\n", "x".repeat(i % 90)).into_bytes())
        .collect()
}

/// Python that prints `numbered_lines(count)`, flushing at uneven points, optionally pausing.
fn numbered_lines_program(count: usize, pause_s: f64) -> String {
    format!(
        "import sys, time\n\
         for i in range({count}):\n\
         \x20   sys.stdout.write('%06d %s\\n' % (i, 'x' * (i % 90)))\n\
         \x20   if i % 7 == 0 or {pause_s} > 0: sys.stdout.flush()\n\
         \x20   if {pause_s} > 0: time.sleep({pause_s})\n"
    )
}

// ---- tests ---------------------------------------------------------------------------------

fn spawn_passes_env_and_reports_the_exit_code() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = launch(dir.path(), &sh("echo \"greeting=$GREETING\"; exit 3"));
        spec.env
            .push(("GREETING".to_string(), "hello there".to_string()));
        let mut run = supervisor().spawn(&spec).await.unwrap();
        assert_eq!(
            run.handle().pid,
            group_of(run.handle().pid),
            "monitor leads its group"
        );
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(3));
        assert_eq!(read_exit_status(&spec.run_dir), Some(ExitStatus::exited(3)));
        assert_eq!(log_text(&spec.run_dir), "greeting=hello there\n");
        assert!(run.child_pid().is_some());
        // A second wait answers at once with the same status.
        assert_eq!(run.wait().await, ExitStatus::exited(3));
    });
}

fn group_of(pid: u32) -> u32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

fn a_signal_ends_the_command_with_128_plus_n() {
    block_on(async {
        // The monitor ignores SIGTERM; the command must get the default disposition back, or
        // the shell would survive its own SIGTERM and exit 0.
        let dir = tempfile::tempdir().unwrap();
        let spec = launch(dir.path(), &sh("kill -TERM $$; echo survived"));
        let mut run = supervisor().spawn(&spec).await.unwrap();
        let status = wait_bounded(&mut run).await;
        assert_eq!(status, ExitStatus::signaled(15));
        assert_eq!(status.code, 143);
        assert_eq!(log_text(&spec.run_dir), "");
    });
}

fn both_streams_land_in_one_log_in_order() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = launch(dir.path(), &sh("echo out1; echo err1 >&2; echo out2"));
        let mut run = supervisor().spawn(&spec).await.unwrap();
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(0));
        assert_eq!(log_text(&spec.run_dir), "out1\nerr1\nout2\n");
    });
}

fn rotation_keeps_every_byte_and_whole_lines() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let program = numbered_lines_program(3000, 0.0);
        let mut spec = launch(dir.path(), &["python3", "-c", &program]);
        spec.log_max_bytes = 4096;
        spec.log_keep = 1000;
        let mut run = supervisor().spawn(&spec).await.unwrap();
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(0));

        let expected = numbered_lines(3000);
        let files = logs::log_files(&spec.run_dir);
        let contents: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
        let total: usize = contents.iter().map(Vec::len).sum();
        assert_eq!(total, expected.len(), "every byte is kept");
        assert_eq!(contents.concat(), expected, "in order");
        assert!(files.len() > 10, "rotated {} times", files.len() - 1);
        for content in &contents {
            assert!(content.len() <= 4096);
            assert_eq!(content.last(), Some(&b'\n'), "files end on a line boundary");
        }
        let last_two = logs::tail(&spec.run_dir, 2).unwrap();
        let expected_text = String::from_utf8(expected).unwrap();
        let expected_lines: Vec<&str> = expected_text.lines().collect();
        assert_eq!(
            last_two,
            format!("{}\n{}\n", expected_lines[2998], expected_lines[2999])
        );
    });
}

fn rotation_drops_only_beyond_keep() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let program = numbered_lines_program(3000, 0.0);
        let mut spec = launch(dir.path(), &["python3", "-c", &program]);
        spec.log_max_bytes = 4096;
        spec.log_keep = 2;
        let mut run = supervisor().spawn(&spec).await.unwrap();
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(0));

        let files = logs::log_files(&spec.run_dir);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["output.log.2", "output.log.1", "output.log"]);
        let kept: Vec<u8> = files.iter().flat_map(|f| fs::read(f).unwrap()).collect();
        assert!(
            numbered_lines(3000).ends_with(&kept),
            "the newest bytes are kept whole"
        );
    });
}

fn stop_kills_a_group_that_ignores_sigterm() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let program = "import signal, subprocess, sys, time\n\
                       signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
                       grandchild = subprocess.Popen(['sleep', '300'])\n\
                       print('grandchild=%d' % grandchild.pid, flush=True)\n\
                       time.sleep(300)\n";
        let spec = launch(dir.path(), &["python3", "-c", program]);
        let mut run = supervisor().spawn(&spec).await.unwrap();
        let grandchild: u32 = log_line_with(&spec.run_dir, "grandchild=")
            .await
            .parse()
            .unwrap();
        let grandchild = handle_of(grandchild);
        let pgid = run.handle().pid;
        assert_eq!(group_members(pgid).len(), 3, "monitor, python and sleep");

        let outcome = stop_group(run.handle(), Duration::from_millis(500)).await;
        assert_eq!(outcome, StopOutcome::Killed);
        assert_eq!(group_members(pgid), Vec::<u32>::new());
        assert!(!is_alive(grandchild), "the grandchild is gone too");
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::signaled(9));
        assert_eq!(
            read_exit_status(&spec.run_dir),
            Some(ExitStatus::signaled(9)),
            "the monitor outlived the command and recorded how it ended"
        );
    });
}

fn stop_terminates_a_group_that_obeys_sigterm() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = launch(dir.path(), &sh("sleep 300 & echo started=$!; wait"));
        let mut run = supervisor().spawn(&spec).await.unwrap();
        let sleeper: u32 = log_line_with(&spec.run_dir, "started=")
            .await
            .parse()
            .unwrap();
        let sleeper = handle_of(sleeper);
        let outcome = stop_group(run.handle(), Duration::from_secs(10)).await;
        assert_eq!(outcome, StopOutcome::Terminated);
        assert_eq!(group_members(run.handle().pid), Vec::<u32>::new());
        assert!(!is_alive(sleeper));
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::signaled(15));
        assert_eq!(
            stop_group(run.handle(), Duration::from_secs(1)).await,
            StopOutcome::AlreadyGone
        );
    });
}

fn a_new_supervisor_adopts_a_running_monitor() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = launch(dir.path(), &sh("echo started; exec sleep 300"));
        let first = supervisor().spawn(&spec).await.unwrap();
        let handle = first.handle();
        // The Flowers that started it forgets it, as a killed Flowers would.
        drop(first);

        let mut adopted = supervisor()
            .adopt(handle, &spec.run_dir)
            .unwrap()
            .expect("the monitor is alive");
        assert_eq!(adopted.handle(), handle);
        let child = eventually("child.pid", || adopted.child_pid()).await;
        log_line_with(&spec.run_dir, "started").await;

        // Cancel-safety: an abandoned wait leaves the next one working.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), adopted.wait())
                .await
                .is_err()
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(wait_bounded(&mut adopted).await, ExitStatus::signaled(9));
        assert!(!is_alive(handle));
    });
}

fn dead_or_reused_handles_are_not_adopted_or_signalled() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = launch(dir.path(), &sh("exit 0"));
        let mut run = supervisor().spawn(&spec).await.unwrap();
        wait_bounded(&mut run).await;
        let gone = run.handle();
        assert!(supervisor().adopt(gone, &spec.run_dir).unwrap().is_none());

        // A process leading its own group, standing in for a stranger that got a reused pid.
        let mut stranger = std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .unwrap();
        let real = handle_of(stranger.id());
        let reused = ProcessHandle {
            pid: real.pid,
            start_ticks: real.start_ticks + 1,
        };
        assert!(!is_alive(reused));
        assert!(supervisor().adopt(reused, &spec.run_dir).unwrap().is_none());
        assert_eq!(
            stop_group(reused, Duration::from_millis(100)).await,
            StopOutcome::AlreadyGone
        );
        assert!(is_alive(real), "the stranger was not signalled");
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    });
}

fn commands_that_cannot_start_say_why() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = supervisor();

        let spec = launch(
            &dir.path().join("a"),
            &["/nonexistent/flowers-test-program"],
        );
        let mut run = supervisor.spawn(&spec).await.unwrap();
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(127));
        let log = log_text(&spec.run_dir);
        assert!(log.contains("/nonexistent/flowers-test-program"), "{log}");
        assert!(log.contains("command not found"), "{log}");

        let script = dir.path().join("not-executable.sh");
        fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
        let spec = launch(&dir.path().join("b"), &[script.to_str().unwrap()]);
        let mut run = supervisor.spawn(&spec).await.unwrap();
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(126));
        assert!(log_text(&spec.run_dir).contains("not executable"));

        let mut spec = launch(&dir.path().join("c"), &["true"]);
        spec.workdir = Some(PathBuf::from("/nonexistent/workdir"));
        let mut run = supervisor.spawn(&spec).await.unwrap();
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(127));
        assert!(log_text(&spec.run_dir).contains("workdir /nonexistent/workdir"));

        // And a good workdir is where the command runs.
        let mut spec = launch(&dir.path().join("d"), &["pwd"]);
        spec.workdir = Some(dir.path().to_path_buf());
        let mut run = supervisor.spawn(&spec).await.unwrap();
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(0));
        assert_eq!(
            log_text(&spec.run_dir).trim(),
            dir.path().canonicalize().unwrap().to_str().unwrap()
        );
    });
}

fn an_empty_command_is_refused() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = launch(dir.path(), &[]);
        let error = supervisor().spawn(&spec).await.unwrap_err();
        assert!(
            matches!(error, SupervisorError::InvalidLaunch { .. }),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "run test-1: cannot launch: the command is empty"
        );

        let mut spec = launch(dir.path(), &["true"]);
        spec.env.push(("A=B".to_string(), "c".to_string()));
        let error = supervisor().spawn(&spec).await.unwrap_err();
        assert!(error.to_string().contains("\"A=B\""), "{error}");
    });
}

fn probe_passes_against_a_server_and_fails_when_it_is_gone() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let port = pick_free_port(&HashSet::new()).unwrap();
        let port_text = port.to_string();
        let mut spec = launch(
            dir.path(),
            &[
                "python3",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port_text,
            ],
        );
        spec.workdir = Some(dir.path().to_path_buf());
        let mut run = supervisor().spawn(&spec).await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match probe_http(port, "/", Duration::from_secs(1)).await {
                Ok(()) => break,
                Err(reason) => assert!(Instant::now() < deadline, "never ready: {reason}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            probe_http(port, "/missing", Duration::from_secs(1)).await,
            Err("HTTP 404".to_string())
        );
        assert_eq!(
            stop_group(run.handle(), Duration::from_secs(10)).await,
            StopOutcome::Terminated
        );
        wait_bounded(&mut run).await;
        assert_eq!(
            probe_http(port, "/", Duration::from_secs(1)).await,
            Err("connection refused".to_string())
        );
    });
}

fn killing_the_monitor_kills_the_command() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let spec = launch(dir.path(), &sh("exec sleep 300"));
        let mut run = supervisor().spawn(&spec).await.unwrap();
        let child = eventually("child.pid", || run.child_pid()).await;
        // Past exec: the pid now runs sleep itself.
        eventually("the command to exec sleep", || {
            fs::read_to_string(format!("/proc/{child}/comm"))
                .ok()
                .filter(|comm| comm.trim() == "sleep")
        })
        .await;
        let child = handle_of(child);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(run.handle().pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::signaled(9));
        assert_eq!(read_exit_status(&spec.run_dir), None);
        eventually("the command to die with its monitor", || {
            (!is_alive(child)).then_some(())
        })
        .await;
    });
}

fn follow_streams_a_live_run_across_rotations() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // About 40 bytes every 40 ms against a 512-byte limit: a rotation every ~0.5 s, slower
        // than the follower's 200 ms poll, so it sees every file.
        let program = numbered_lines_program(60, 0.04);
        let mut spec = launch(dir.path(), &["python3", "-c", &program]);
        spec.log_max_bytes = 512;
        spec.log_keep = 100;
        let mut run = supervisor().spawn(&spec).await.unwrap();
        let mut stream = Box::pin(logs::follow(spec.run_dir.clone(), false));
        let mut seen = Vec::new();
        let collected = tokio::time::timeout(PATIENCE, async {
            while let Some(chunk) = stream.next().await {
                seen.extend(chunk.unwrap());
            }
        })
        .await;
        assert!(collected.is_ok(), "follow should end once the Run exited");
        assert_eq!(wait_bounded(&mut run).await, ExitStatus::exited(0));
        assert!(
            logs::log_files(&spec.run_dir).len() > 2,
            "the log was rotated"
        );
        assert_eq!(
            String::from_utf8_lossy(&seen),
            String::from_utf8_lossy(&numbered_lines(60))
        );
    });
}
