//! A Run's output: stdout and stderr captured together in `data/runs/RUN_ID/output.log`,
//! rotated by size with a bounded number of old files, and read back with `flowers logs`
//! (tail, several replicas, follow until a job ends).

use std::process::Stdio;

use tokio::io::AsyncReadExt;

use crate::support::*;

const MAX_SIZE: u64 = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_captured_rotated_by_size_and_kept_to_the_configured_count() {
    let server = TestServer::start(&format!(
        "[logs]\nmax_size = \"16KiB\"\nkeep = 2\n{}",
        service("web", "env = { WORKLOAD_LOG_LINES = \"3000\" }")
    ))
    .await;
    let run = server.ready_runs("web", 1).await.remove(0);
    let port = run.port.unwrap();

    // The workload prints its numbered lines on stdout, then a line on stderr, then says it
    // listens: one stream, in the order written.
    let expected = format!(
        "line 002999 {}\nto stderr\nlistening on 127.0.0.1:{port}\n",
        "x".repeat(50)
    );
    let tail = server
        .eventually("the last lines in the log", || async {
            let (code, out, _) = server.cli(&["logs", &run.id, "--tail", "3"]);
            (code == 0 && out.contains("listening on")).then_some(out)
        })
        .await;
    assert_eq!(tail, expected);

    let run_dir = server.data_dir().join("runs").join(&run.id);
    let mut names: Vec<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("output.log"))
        .collect();
    names.sort();
    assert_eq!(names, ["output.log", "output.log.1", "output.log.2"]);

    // Oldest first, each file whole lines and within the limit; together the newest lines,
    // none missing between files.
    let mut numbers = Vec::new();
    let mut text = String::new();
    for name in ["output.log.2", "output.log.1", "output.log"] {
        let content = std::fs::read_to_string(run_dir.join(name)).unwrap();
        assert!(
            content.len() as u64 <= MAX_SIZE,
            "{name} is {} bytes",
            content.len()
        );
        assert!(content.ends_with('\n'), "{name} ends mid-line");
        for line in content.lines() {
            if let Some(rest) = line.strip_prefix("line ") {
                numbers.push(rest[..6].parse::<u32>().unwrap());
            }
        }
        text.push_str(&content);
    }
    assert!(text.ends_with(&expected), "{}", &text[text.len() - 200..]);
    let first = numbers[0];
    assert!(first > 0, "the oldest lines should have been rotated away");
    assert_eq!(numbers, (first..3000).collect::<Vec<u32>>());
    // A file is rotated only when the next line does not fit: the rotated ones are nearly full.
    for name in ["output.log.2", "output.log.1"] {
        let size = std::fs::metadata(run_dir.join(name)).unwrap().len();
        assert!(size > MAX_SIZE - 100, "{name} is only {size} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_service_with_two_replicas_prefix_each_line_with_its_run() {
    let server = TestServer::start(&service(
        "web",
        "replicas = 2\ndevices = 1\nenv = { WORKLOAD_LOG_LINES = \"3\" }",
    ))
    .await;
    let runs = server.ready_runs("web", 2).await;
    let out = server
        .eventually("both replicas' logs", || async {
            let (code, out, _) = server.cli(&["logs", "web"]);
            let complete = runs.iter().all(|r| {
                out.contains(&format!(
                    "{} | listening on 127.0.0.1:{}\n",
                    r.id,
                    r.port.unwrap()
                ))
            });
            (code == 0 && complete).then_some(out)
        })
        .await;
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    for line in out.lines() {
        let (id, _) = line
            .split_once(" | ")
            .unwrap_or_else(|| panic!("no run prefix: {line:?}\n{out}"));
        assert!(ids.contains(&id), "{line:?}");
    }
    for id in &ids {
        let own: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{id} | ")))
            .collect();
        let x = "x".repeat(50);
        assert_eq!(
            own[..4],
            [
                format!("line 000000 {x}"),
                format!("line 000001 {x}"),
                format!("line 000002 {x}"),
                "to stderr".to_string(),
            ],
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_of_a_job_prints_lines_as_they_come_and_exits_when_the_job_ends() {
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    // Prints one line, waits for the test to say go, then prints lines over about a second
    // and exits.
    let script = format!(
        "echo first; while [ ! -e {go} ]; do sleep 0.05; done; i=1; \
         while [ $i -le 10 ]; do echo tick $i; sleep 0.1; i=$((i+1)); done; echo last >&2",
        go = go.display()
    );
    let server = TestServer::start(&format!(
        "[jobs.train]\ncommand = [\"sh\", \"-c\", {script:?}]\n"
    ))
    .await;
    let run = server.client.start_job("train").await.unwrap().run.unwrap();
    server
        .eventually("the job's first line", || async {
            let (_, out, _) = server.cli(&["logs", &run]);
            out.contains("first").then_some(())
        })
        .await;

    let mut child = tokio::process::Command::new(FLOWERS)
        .args(["logs", "train", "-f"])
        .env("FLOWERS_API", server.client.base())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("flowers logs -f starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !seen.ends_with(b"first\n") {
            let mut buffer = [0u8; 1024];
            let read = stdout.read(&mut buffer).await.unwrap();
            assert!(read > 0, "logs -f ended before the job did");
            seen.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("the existing output first");
    assert!(
        child.try_wait().unwrap().is_none(),
        "still following while the job runs"
    );

    std::fs::write(&go, "").unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("logs -f to exit once the job ended")
        .unwrap();
    stdout.read_to_end(&mut seen).await.unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let ticks: String = (1..=10).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(
        String::from_utf8(seen).unwrap(),
        format!("first\n{ticks}last\n")
    );
    let record = server.client.run(&run).await.unwrap();
    assert_eq!(record.state, "exited");
    assert_eq!(record.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_run_that_never_printed_are_empty() {
    let server = TestServer::start(
        "[jobs.quiet]\ncommand = [\"sleep\", \"600\"]\nstop_grace = \"1s\"\n\
         [jobs.silent]\ncommand = [\"true\"]\n",
    )
    .await;
    let quiet = server.client.start_job("quiet").await.unwrap().run.unwrap();
    let silent = server
        .client
        .start_job("silent")
        .await
        .unwrap()
        .run
        .unwrap();
    server
        .eventually("silent to end", || async {
            let run = server.client.run(&silent).await.ok()?;
            run.ended_ms.map(|_| ())
        })
        .await;
    server
        .eventually("quiet to be running", || async {
            let run = server.client.run(&quiet).await.ok()?;
            (run.state == "running").then_some(())
        })
        .await;

    for name in [quiet.as_str(), "quiet", silent.as_str(), "silent"] {
        let (code, out, err) = server.cli(&["logs", name]);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(out, "", "{name}");
        assert_eq!(err, "", "{name}");
    }
    let response = reqwest::get(format!(
        "http://127.0.0.1:{}/v1/runs/{quiet}/logs",
        server.api_port
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "");

    // Following an ended run that never printed ends at once, with nothing.
    let (code, out, err) = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking({
            let dir = server.dir.path().to_path_buf();
            let api = server.client.base().to_string();
            let silent = silent.clone();
            move || cli_in(&dir, &api, &["logs", &silent, "-f"])
        }),
    )
    .await
    .expect("logs -f of an ended run to exit")
    .unwrap();
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_runs_keep_their_directories() {
    let server = TestServer::start(
        "[logs]\nkeep_runs = 2\n[jobs.once]\ncommand = [\"sh\", \"-c\", \"echo attempt $FLOWERS_RUN_ID\"]\n",
    )
    .await;
    let mut runs = Vec::new();
    for attempt in 1..=4 {
        let run = server.client.start_job("once").await.unwrap().run.unwrap();
        server
            .events_matching("once", "job_succeeded", attempt)
            .await;
        runs.push(run);
    }
    let dir = |run: &str| server.data_dir().join("runs").join(run);
    for old in &runs[..2] {
        assert!(
            !dir(old).exists(),
            "{old}'s directory outlived keep_runs = 2"
        );
        // The record stays; its logs say why they are gone.
        assert_eq!(server.client.run(old).await.unwrap().state, "exited");
        let (code, _, err) = server.cli(&["logs", old]);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("the logs of run {old} were removed")),
            "{err}"
        );
    }
    for kept in &runs[2..] {
        assert!(dir(kept).join("output.log").is_file());
        let (code, out, err) = server.cli(&["logs", kept]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("attempt {kept}\n"));
    }
}
