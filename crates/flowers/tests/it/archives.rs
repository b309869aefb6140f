//! Archives end to end: `flowers up` with the video service and the `video-analyze` job, and
//! `flowers video analyze` on a folder of clips made with ffmpeg (one crossing clip, one long
//! clip, one corrupt file, one with a codec ffmpeg does not know). The job is stopped in the
//! middle of the long clip, the drive "unplugged" (its folder renamed) and plugged back under
//! another name; no finished file is analysed twice, and the report's crossings are `scan`'s.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::*;
use crate::video::crossing_clip;

const LINE: &str = "x330=0.515625,1,0.515625,0";

fn config() -> String {
    r#"
[services.video]
command = ["flowers", "engine", "video", "--no-detector"]
routes = [{ path = "/video" }]
replace = "stop-first"
max_body = "1GiB"
[services.video.probe]
interval = "200ms"

[video.motion]
threshold = 30

[jobs.video-analyze]
command = ["flowers", "engine", "video-analyze", "--no-detector", "--workers", "1"]
devices = 1
priority = -10
preemptible = true
"#
    .to_string()
}

fn ffmpeg(dir: &Path, args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("ffmpeg runs (scripts/setup installs it)");
    assert!(status.success(), "ffmpeg {args:?}");
}

/// The folder: `a-cross.mp4`, `b-long.mp4` (20 minutes of a test pattern at 10 fps, made by
/// joining copies of 20 s without re-encoding, so that analysing it takes a while),
/// `c-corrupt.mp4`, `d-unknown.avi` (an MPEG-4 AVI whose codec tag was overwritten) and
/// `e-deleted.mp4`, which the test deletes while the analysis is stopped.
fn recordings(dir: &Path) -> std::path::PathBuf {
    let usb = dir.join("usb0");
    std::fs::create_dir_all(usb.join("day2")).unwrap();
    let made = crossing_clip(dir);
    std::fs::rename(made, usb.join("a-cross.mp4")).unwrap();
    ffmpeg(
        dir,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=640x360:r=10:d=20",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
            "part.mp4",
        ],
    );
    let list: String = (0..60).map(|_| "file 'part.mp4'\n").collect();
    std::fs::write(dir.join("parts.txt"), list).unwrap();
    ffmpeg(
        dir,
        &[
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            "parts.txt",
            "-c",
            "copy",
            "usb0/b-long.mp4",
        ],
    );
    std::fs::write(usb.join("day2/c-corrupt.mp4"), vec![0x42u8; 200_000]).unwrap();
    ffmpeg(
        dir,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=160x120:r=25:d=1",
            "-c:v",
            "mpeg4",
            "-vtag",
            "XVID",
            "odd.avi",
        ],
    );
    let mut patched = std::fs::read(dir.join("odd.avi")).unwrap();
    let tags: Vec<usize> = (0..patched.len() - 3)
        .filter(|&i| &patched[i..i + 4] == b"XVID")
        .collect();
    assert!(!tags.is_empty(), "the AVI names its codec XVID");
    for i in tags {
        patched[i..i + 4].copy_from_slice(b"QQQQ");
    }
    std::fs::write(usb.join("day2/d-unknown.avi"), patched).unwrap();
    ffmpeg(
        dir,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=160x120:r=25:d=1",
            "-c:v",
            "libx264",
            "usb0/day2/e-deleted.mp4",
        ],
    );
    usb
}

async fn analysis(server: &TestServer) -> (Value, Vec<Value>) {
    let answer = get_json(server.gateway_port, "/video/v1/analyses/1?files=true")
        .await
        .unwrap_or_default();
    let files = answer["files"].as_array().cloned().unwrap_or_default();
    (answer["analysis"].clone(), files)
}

fn file<'f>(files: &'f [Value], name: &str) -> &'f Value {
    files
        .iter()
        .find(|f| f["relative"].as_str().unwrap().ends_with(name))
        .unwrap_or_else(|| panic!("no {name} in {files:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_is_analysed_by_the_job_resumed_after_a_stop_and_an_unplugging_and_reported() {
    let server = TestServer::start(&config()).await;
    let dir = server.dir.path();
    recordings(dir);
    server
        .eventually("the video service to be ready", || async {
            get_json(server.gateway_port, "/video/v1/analyses").await
        })
        .await;
    let gateway = format!("http://127.0.0.1:{}", server.gateway_port);
    let analyze = |folder: &str| {
        let mut command = Command::new(FLOWERS);
        command
            .args([
                "video",
                "--gateway",
                &gateway,
                "analyze",
                folder,
                "--line",
                LINE,
            ])
            .current_dir(dir)
            .env("FLOWERS_API", server.client.base())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };

    // Bad input first: nothing is recorded.
    let (code, _, err) = server.cli(&["video", "--gateway", &gateway, "analyze", "nowhere"]);
    assert_eq!(code, 1);
    assert!(err.contains("nowhere: No such file or directory"), "{err}");
    let (code, _, err) = server.cli(&[
        "video",
        "--gateway",
        &gateway,
        "analyze",
        "usb0",
        "--fps",
        "0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("settings.fps: expected frames per second above 0"),
        "{err}"
    );
    let none = get_json(server.gateway_port, "/video/v1/analyses")
        .await
        .unwrap();
    assert_eq!(none["analyses"], serde_json::json!([]));

    // The command starts the job and follows it; the job is stopped in the long clip.
    let watching = analyze("usb0").spawn().unwrap();
    let (_, files) = server
        .eventually("the long clip to be under way", || async {
            let (view, files) = analysis(&server).await;
            let long = files
                .iter()
                .find(|f| f["relative"] == "b-long.mp4")?
                .clone();
            (long["state"] == "running" && long["frames"].as_u64() > Some(0))
                .then_some((view, files))
        })
        .await;
    let first_done = file(&files, "a-cross.mp4")["finished_ms"].as_i64().unwrap();
    let run = server
        .client
        .job("video-analyze")
        .await
        .unwrap()
        .last_run
        .unwrap();
    assert_eq!(run.state, "running");
    server.client.stop_run(&run.id).await.unwrap();
    let output = watching.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "{out}\n{err}");
    assert!(
        out.contains("analysis 1: 5 files, 0 already finished"),
        "{out}"
    );
    assert!(
        err.contains("stopped: ") && err.contains("run the same command again"),
        "{err}"
    );
    let (view, files) = analysis(&server).await;
    assert_eq!(view["state"], "waiting", "{view:#}");
    assert_eq!(
        file(&files, "b-long.mp4")["state"],
        "pending",
        "given back at the stop"
    );
    assert_eq!(file(&files, "a-cross.mp4")["state"], "done");
    let logs = server.cli(&["logs", &run.id]).1;
    assert!(
        logs.contains("the files in progress are given back"),
        "{logs}"
    );

    // The drive is unplugged: the job, started by hand, says so and stops.
    std::fs::rename(dir.join("usb0"), dir.join("away")).unwrap();
    let (code, _, err) = server.cli(&["run", "video-analyze"]);
    assert_eq!(code, 0, "{err}");
    let gone = server
        .eventually("the job to notice the drive is gone", || async {
            let (view, _) = analysis(&server).await;
            view["last_error"].as_str().map(str::to_string)
        })
        .await;
    assert_eq!(gone, format!("source gone: {}", dir.join("usb0").display()));
    let listed = server.cli(&["video", "--gateway", &gateway, "analyses"]).1;
    assert!(listed.contains("source gone"), "{listed}");

    // Plugged back under another name, one file deleted meanwhile: the same command resumes
    // and finishes; the deleted file fails, the rest go on.
    std::fs::rename(dir.join("away"), dir.join("usb1")).unwrap();
    std::fs::remove_file(dir.join("usb1/day2/e-deleted.mp4")).unwrap();
    let output = analyze("usb1").output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("analysis 1 (resumed): 5 files, 1 already finished"),
        "{out}"
    );
    assert!(
        out.contains("analysis 1 finished: 5 files (3 failed)"),
        "{out}"
    );
    assert!(
        out.contains("failed ") && out.contains("d-unknown.avi"),
        "{out}"
    );
    let (view, files) = analysis(&server).await;
    assert_eq!(view["state"], "finished");
    // The service's [video.motion] is the analysis's, for the job.
    assert_eq!(view["settings"]["motion"]["threshold"], 30, "{view:#}");
    assert_eq!(
        file(&files, "a-cross.mp4")["finished_ms"].as_i64(),
        Some(first_done),
        "a finished file is not analysed again"
    );
    let long = file(&files, "b-long.mp4");
    assert_eq!(long["state"], "done");
    // The Run told Flowers how far it came (`flowers ps`): files finished of all.
    let progress = server
        .client
        .job("video-analyze")
        .await
        .unwrap()
        .last_run
        .and_then(|run| run.progress)
        .expect("the job reported its progress");
    assert_eq!((progress.step, progress.total), (Some(5), Some(5)));
    assert_eq!(progress.metrics["frames"], 6025.0);
    assert_eq!(long["frames"].as_u64(), Some(6000));
    assert!(long["path"].as_str().unwrap().contains("/usb1/"), "{long}");
    let corrupt = file(&files, "c-corrupt.mp4");
    assert_eq!(corrupt["state"], "failed");
    assert!(
        corrupt["error"]
            .as_str()
            .unwrap()
            .contains("Invalid data found"),
        "{corrupt}"
    );
    let deleted = file(&files, "e-deleted.mp4");
    assert_eq!(deleted["state"], "failed");
    assert!(
        deleted["error"]
            .as_str()
            .unwrap()
            .ends_with("is no longer there (deleted or moved)"),
        "{deleted}"
    );
    let unknown = file(&files, "d-unknown.avi");
    assert_eq!(unknown["state"], "failed");
    assert!(
        unknown["error"].as_str().unwrap().contains("not found"),
        "{unknown}"
    );

    // Once more: nothing to do, at once.
    let (code, out, err) = server.cli(&[
        "video",
        "--gateway",
        &gateway,
        "analyze",
        "usb1",
        "--line",
        LINE,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing left to analyse"), "{out}");

    // The report: the crossing clip's crossings are scan's, with pictures.
    let (code, csv, err) = server.cli(&["video", "--gateway", &gateway, "report", "1", "--csv"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("file,time_s,end_s,kind,class,score,zone,line,direction,object,snapshot,detail")
    );
    let crossings: Vec<(String, String)> = lines
        .clone()
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f[0] == "a-cross.mp4" && f[3] == "line_crossed")
        .map(|f| (f[1].clone(), f[8].clone()))
        .collect();
    let scan = Command::new(FLOWERS)
        .args([
            "--json",
            "video",
            "scan",
            "usb1/a-cross.mp4",
            "--line",
            LINE,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let scanned: Vec<(String, String)> = String::from_utf8_lossy(&scan.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "line_crossed")
        .map(|e| {
            (
                format!("{:.3}", e["time"].as_f64().unwrap()),
                e["direction"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        scanned,
        [
            ("1.800".to_string(), "left_to_right".to_string()),
            ("2.600".to_string(), "right_to_left".to_string())
        ]
    );
    assert_eq!(crossings, scanned);
    assert_eq!(
        lines.filter(|l| l.contains(",file_failed,")).count(),
        3,
        "{csv}"
    );
    let picture = csv
        .lines()
        .find(|l| l.starts_with("a-cross.mp4,") && l.contains(",line_crossed,"))
        .and_then(|l| l.split(',').nth(10))
        .unwrap()
        .to_string();
    let jpeg = reqwest::get(format!("{gateway}{picture}"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(jpeg.starts_with(&[0xFF, 0xD8]), "{picture}");

    // Deleted, with its pictures: the report is gone too.
    let (code, out, err) = server.cli(&["video", "--gateway", &gateway, "delete-analysis", "1"]);
    assert_eq!((code, out.trim()), (0, "deleted analysis 1"), "{err}");
    let (code, _, err) = server.cli(&["video", "--gateway", &gateway, "report", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("no analysis 1"), "{err}");
    let gone = reqwest::get(format!("{gateway}{picture}")).await.unwrap();
    assert_eq!(gone.status(), 404);
}

/// With no device to give the job, the command says why it waits instead of waiting silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_says_why_the_job_waits() {
    let server = TestServer::start(&format!("[devices]\ncpu_slots = 0\n{}", config())).await;
    let dir = server.dir.path();
    std::fs::create_dir(dir.join("usb0")).unwrap();
    let made = crossing_clip(dir);
    std::fs::rename(made, dir.join("usb0/cross.mp4")).unwrap();
    server
        .eventually("the video service to be ready", || async {
            get_json(server.gateway_port, "/video/v1/analyses").await
        })
        .await;
    let gateway = format!("http://127.0.0.1:{}", server.gateway_port);
    let mut watching = Command::new(FLOWERS)
        .args(["video", "--gateway", &gateway, "analyze", "usb0"])
        .current_dir(dir)
        .env("FLOWERS_API", server.client.base())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = watching.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("(waiting for the job): "))
    });
    // Lines come every 10 s when stderr is not a terminal; the command itself never ends.
    let found = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || reader.join().unwrap()),
    )
    .await;
    let _ = watching.kill();
    let _ = watching.wait();
    let line = found
        .expect("a progress line with the job's reason in time")
        .unwrap()
        .expect("a progress line with the job's reason");
    assert!(line.contains("needs 1 device"), "{line}");
}
