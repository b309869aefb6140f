//! `flowers video …`: `scan` analyses one file here and now, with no server; the other
//! commands are a client of the video service's HTTP API through the gateway (`--gateway`,
//! default `http://127.0.0.1:8080`, and the service's route, `/video` in the embedded default).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};

use crate::rag_cli::{encode, ServiceClient};
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct VideoArgs {
    /// The gateway the video service is routed on.
    #[arg(
        long,
        global = true,
        env = "FLOWERS_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// The video service's route on the gateway.
    #[arg(long, global = true, default_value = "/video")]
    route: String,
    #[command(subcommand)]
    action: VideoAction,
}

/// Zones, lines and masks, as `scan` and `add` take them. Coordinates are fractions of the
/// frame's width and height, each in [0, 1].
#[derive(clap::Args, Debug, Default)]
pub struct Geometry {
    /// A counting line `[NAME=]X1,Y1,X2,Y2` (from, to); crossing it left to right means as
    /// seen walking from (X1,Y1) to (X2,Y2). Repeatable.
    #[arg(long = "line", value_name = "[NAME=]X1,Y1,X2,Y2")]
    lines: Vec<String>,
    /// A zone `[NAME=]X,Y X,Y X,Y …` (a polygon, at least three points). Repeatable.
    #[arg(long = "zone", value_name = "[NAME=]X,Y X,Y X,Y…")]
    zones: Vec<String>,
    /// Loitering: an object in a zone this long (e.g. 30s) is reported once.
    #[arg(long, value_name = "DURATION")]
    loiter_after: Option<String>,
    /// A polygon `X,Y X,Y X,Y …` where nothing is seen to move. Repeatable.
    #[arg(long = "mask", value_name = "X,Y X,Y X,Y…")]
    masks: Vec<String>,
    /// Frames analysed per second.
    #[arg(long)]
    fps: Option<f64>,
    /// Width of the analysed frames.
    #[arg(long)]
    width: Option<u32>,
}

#[derive(clap::Subcommand, Debug)]
pub enum VideoAction {
    /// Analyse a video file here, now, with no server: prints each zone, loitering and line
    /// event as it is found (times from the file's start), then a summary.
    Scan {
        file: PathBuf,
        #[command(flatten)]
        geometry: Geometry,
        /// The ffmpeg program.
        #[arg(long, default_value = "ffmpeg")]
        ffmpeg: PathBuf,
        /// Decode on the GPU with NVDEC (`cuda`; fails where there is no NVIDIA driver) or
        /// in software (`none`).
        #[arg(long, default_value = "none", value_parser = ["none", "cuda"])]
        hwaccel: String,
    },
    /// List the video service's streams with their state and rate.
    Streams,
    /// Add (or replace) a stream through the API; it is kept across restarts.
    Add {
        name: String,
        /// rtsp://, rtsps://, http://, https:// or an absolute file path.
        url: String,
        #[command(flatten)]
        geometry: Geometry,
    },
    /// Remove a stream added through the API.
    Remove { name: String },
    /// Show stored events, newest last; with --follow, then events as they happen.
    Events {
        #[arg(long)]
        stream: Option<String>,
        /// object_started, object_ended, zone_entered, zone_left, line_crossed, loitered,
        /// stream_offline or stream_online.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, short)]
        follow: bool,
    },
    /// Analyse recordings (files, or folders walked for video files) with the video service:
    /// the `video-analyze` job does the work, this draws its progress (frames, files, rate,
    /// time left). Interrupted (Ctrl-C here only stops watching), preempted or unplugged, the
    /// same command resumes without analysing a finished file again, even with the drive
    /// mounted elsewhere.
    Analyze {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        geometry: Geometry,
        /// Classes kept from the detector (comma-separated; default all).
        #[arg(long, value_delimiter = ',', value_name = "CLASS,…")]
        objects: Vec<String>,
        /// The least detector score kept.
        #[arg(long, value_name = "SCORE")]
        min_score: Option<f64>,
        /// A new analysis, even if one with these settings has these files.
        #[arg(long)]
        new: bool,
        /// Start the job and return; `flowers video analyses` shows how far it has come.
        #[arg(long)]
        detach: bool,
        /// The job that runs `flowers engine video-analyze`.
        #[arg(long, default_value = "video-analyze")]
        job: String,
    },
    /// List analyses of recordings and how far each has come.
    Analyses,
    /// Delete an analysis with its results and pictures (not while the job works on it).
    DeleteAnalysis { id: i64 },
    /// An analysis's report: a row per object seen, zone or line event, and failed file.
    Report {
        id: i64,
        /// CSV (one header line, then a row per line) instead of a table or JSON.
        #[arg(long)]
        csv: bool,
        /// Write the report (CSV with --csv, else JSON) to FILE.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Save an object's snapshot (JPEG).
    Snapshot {
        object: i64,
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
    },
}

pub async fn run(args: VideoArgs, api: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = ServiceClient {
        what: "the video service",
        http: reqwest::Client::new(),
        base: format!(
            "{}{}",
            args.gateway.trim_end_matches('/'),
            args.route.trim_end_matches('/')
        ),
    };
    match args.action {
        VideoAction::Scan {
            file,
            geometry,
            ffmpeg,
            hwaccel,
        } => tokio::task::spawn_blocking(move || {
            scan(&file, &geometry, ffmpeg, hwaccel == "cuda", json)
        })
        .await
        .context("the scanning thread panicked")?,
        VideoAction::Streams => streams(&client, json).await,
        VideoAction::Analyze {
            paths,
            geometry,
            objects,
            min_score,
            new,
            detach,
            job,
        } => {
            let mut settings = geometry.to_json()?;
            if !objects.is_empty() {
                settings.insert("objects".to_string(), json!(objects));
            }
            if let Some(score) = min_score {
                settings.insert("min_score".to_string(), json!(score));
            }
            let options = crate::video_archive_cli::AnalyzeOptions {
                paths,
                settings,
                new,
                detach,
                job,
            };
            crate::video_archive_cli::analyze(&client, api, options, json).await
        }
        VideoAction::Analyses => crate::video_archive_cli::analyses(&client, json).await,
        VideoAction::DeleteAnalysis { id } => {
            let path = format!("/v1/analyses/{id}");
            client.send(client.http.delete(client.url(&path))).await?;
            println!("deleted analysis {id}");
            Ok(ExitCode::SUCCESS)
        }
        VideoAction::Report { id, csv, output } => {
            crate::video_archive_cli::report(&client, id, csv, output, json).await
        }
        VideoAction::Add {
            name,
            url,
            geometry,
        } => {
            let mut body = geometry.to_json()?;
            body.insert("url".to_string(), json!(url));
            let path = format!("/v1/streams/{}", encode(&name));
            let response = client
                .send(client.http.put(client.url(&path)).json(&body))
                .await?;
            let created = response.status() == reqwest::StatusCode::CREATED;
            println!(
                "{} stream {name}",
                if created { "added" } else { "replaced" }
            );
            Ok(ExitCode::SUCCESS)
        }
        VideoAction::Remove { name } => {
            let path = format!("/v1/streams/{}", encode(&name));
            client.send(client.http.delete(client.url(&path))).await?;
            println!("removed stream {name}");
            Ok(ExitCode::SUCCESS)
        }
        VideoAction::Events {
            stream,
            kind,
            class,
            zone,
            limit,
            follow,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [
                ("stream", stream),
                ("kind", kind),
                ("class", class),
                ("zone", zone),
            ] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", encode(&value)));
                }
            }
            events(&client, &query.join("&"), follow, json).await
        }
        VideoAction::Snapshot { object, output } => {
            let path = format!("/v1/objects/{object}/snapshot.jpg");
            let bytes = client
                .send(client.http.get(client.url(&path)))
                .await?
                .bytes()
                .await?;
            std::fs::write(&output, &bytes)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("saved {} ({} bytes)", output.display(), bytes.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl Geometry {
    /// The keys of a `[video.streams.NAME]` table these flags set, checked by the config
    /// crate (as the file would be) where they are used.
    fn to_json(&self) -> anyhow::Result<Map<String, Value>> {
        let mut body = Map::new();
        if let Some(fps) = self.fps {
            body.insert("fps".to_string(), json!(fps));
        }
        if let Some(width) = self.width {
            body.insert("width".to_string(), json!(width));
        }
        let mut lines = Map::new();
        for (i, text) in self.lines.iter().enumerate() {
            let (name, numbers) = named(text, "line", i)?;
            let n = numbers_of(numbers, &format!("--line {text}"))?;
            let [x1, y1, x2, y2] = n[..] else {
                bail!("--line {text}: expected X1,Y1,X2,Y2, four numbers");
            };
            lines.insert(name, json!({"from": [x1, y1], "to": [x2, y2]}));
        }
        if !lines.is_empty() {
            body.insert("lines".to_string(), Value::Object(lines));
        }
        let mut zones = Map::new();
        for (i, text) in self.zones.iter().enumerate() {
            let (name, points) = named(text, "zone", i)?;
            let mut zone = json!({"polygon": points_of(points, &format!("--zone {text}"))?});
            if let Some(after) = &self.loiter_after {
                zone["loiter_after"] = json!(after);
            }
            zones.insert(name, zone);
        }
        if !zones.is_empty() {
            body.insert("zones".to_string(), Value::Object(zones));
        } else if self.loiter_after.is_some() {
            bail!("--loiter-after needs a --zone to loiter in");
        }
        if !self.masks.is_empty() {
            let masks = self
                .masks
                .iter()
                .map(|text| points_of(text, &format!("--mask {text}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            body.insert("masks".to_string(), json!(masks));
        }
        Ok(body)
    }
}

/// `NAME=rest` or `rest`, named `{kind}{i + 1}`.
fn named<'t>(text: &'t str, kind: &str, i: usize) -> anyhow::Result<(String, &'t str)> {
    Ok(match text.split_once('=') {
        Some((name, rest)) => (name.trim().to_string(), rest),
        None => (format!("{kind}{}", i + 1), text),
    })
}

fn numbers_of(text: &str, flag: &str) -> anyhow::Result<Vec<f64>> {
    text.split([',', ' '])
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            part.trim()
                .parse::<f64>()
                .with_context(|| format!("{flag}: {part:?} is not a number"))
        })
        .collect()
}

fn points_of(text: &str, flag: &str) -> anyhow::Result<Vec<[f64; 2]>> {
    text.split_whitespace()
        .map(|pair| {
            let n = numbers_of(pair, flag)?;
            match n[..] {
                [x, y] => Ok([x, y]),
                _ => bail!("{flag}: {pair:?} is not a point X,Y"),
            }
        })
        .collect()
}

fn scan(
    file: &std::path::Path,
    geometry: &Geometry,
    ffmpeg: PathBuf,
    hwaccel: bool,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    if !file.is_file() {
        bail!("{}: no such file", file.display());
    }
    let absolute = std::path::absolute(file)?;
    let mut body = geometry.to_json()?;
    body.insert("url".to_string(), json!(absolute.to_string_lossy()));
    let spec = config::video_stream_from_json("scan", &Value::Object(body))
        .map_err(|error| anyhow::anyhow!("{}", error.to_string().replace("request body: ", "")))?;
    let mut decode = video::DecodeOptions::new(spec.url.clone());
    decode.fps = spec.fps;
    decode.width = spec.width;
    decode.program = ffmpeg;
    decode.hwaccel = hwaccel;
    let options = video::ScanOptions {
        decode,
        pipeline: video::PipelineOptions::from_spec(&spec, domain::MotionSpec::default())?,
    };
    let mut crossings = 0usize;
    let report = video::scan(&options, |event| {
        let seconds = event.frame as f64 / f64::from(spec.fps);
        let value = scan_event_json(&event.event, seconds);
        if matches!(event.event, video::RuleEvent::LineCrossed { .. }) {
            crossings += 1;
        }
        if json_output {
            println!("{value}");
        } else {
            println!("{}", describe(&value));
        }
    })?;
    if json_output {
        println!(
            "{}",
            json!({"summary": {"frames": report.frames, "width": report.width, "height": report.height, "crossings": crossings}})
        );
    } else {
        println!(
            "{} frames of {}×{} analysed at {} fps; {crossings} line crossings",
            report.frames, report.width, report.height, spec.fps
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn scan_event_json(event: &video::RuleEvent, seconds: f64) -> Value {
    let seconds = (seconds * 1000.0).round() / 1000.0;
    match event {
        video::RuleEvent::ZoneEntered { track, zone, .. } => {
            json!({"time": seconds, "kind": "zone_entered", "object": track, "zone": zone})
        }
        video::RuleEvent::ZoneLeft { track, zone, .. } => {
            json!({"time": seconds, "kind": "zone_left", "object": track, "zone": zone})
        }
        video::RuleEvent::Loitered { track, zone, .. } => {
            json!({"time": seconds, "kind": "loitered", "object": track, "zone": zone})
        }
        video::RuleEvent::LineCrossed {
            track,
            line,
            direction,
            ..
        } => json!({
            "time": seconds, "kind": "line_crossed", "object": track, "line": line,
            "direction": direction.as_str()
        }),
    }
}

/// One event as a line for people.
fn describe(event: &Value) -> String {
    let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("");
    let place = [text("zone"), text("line"), text("direction")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let when = match event.get("time").and_then(Value::as_f64) {
        Some(seconds) => format!("{seconds:>9.3}s"),
        None => event
            .get("time_ms")
            .and_then(Value::as_i64)
            .map(crate::commands::time)
            .unwrap_or_default(),
    };
    let object = event
        .get("object")
        .and_then(Value::as_i64)
        .map(|o| format!("object {o}"))
        .unwrap_or_default();
    format!(
        "{when}  {:<14} {}{}{}",
        text("kind"),
        [text("stream"), text("class")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| format!("{s} "))
            .collect::<String>(),
        if place.is_empty() {
            String::new()
        } else {
            format!("{place} ")
        },
        object
    )
    .trim_end()
    .to_string()
}

async fn streams(client: &ServiceClient, json: bool) -> anyhow::Result<ExitCode> {
    let answer: Value = client.get_json("/v1/streams").await?;
    let streams = answer["streams"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&streams)?);
        return Ok(ExitCode::SUCCESS);
    }
    if streams.is_empty() {
        println!(
            "no streams: declare [video.streams.NAME] in flowers.toml or `flowers video add NAME URL`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "FPS",
        "SIZE",
        "OBJECTS",
        "FROM",
        "ERROR OR NOTE",
    ]);
    for stream in &streams {
        let status = &stream["status"];
        table.row(vec![
            stream["name"].as_str().unwrap_or("").to_string(),
            status["state"].as_str().unwrap_or("").to_string(),
            format!("{:.1}", status["fps"].as_f64().unwrap_or(0.0)),
            format!("{}×{}", status["width"], status["height"]),
            status["objects"].to_string(),
            stream["origin"].as_str().unwrap_or("").to_string(),
            status["error"]
                .as_str()
                .or(status["note"].as_str())
                .unwrap_or("")
                .to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

async fn events(
    client: &ServiceClient,
    query: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let print = |event: &Value| {
        if json {
            println!("{event}");
        } else {
            println!("{}", describe(event));
        }
    };
    if !follow {
        let answer: Value = client.get_json(&format!("/v1/events?{query}")).await?;
        for event in answer["events"].as_array().into_iter().flatten() {
            print(event);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let url = client.url(&format!("/v1/events?{query}&follow=true"));
    let response = client.send(client.http.get(&url)).await?;
    let bytes = Box::pin(
        response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(e.to_string())),
    );
    let mut frames = std::pin::pin!(client::sse::events(bytes));
    while let Some(frame) = frames.next().await {
        let frame = frame.context("the event stream broke")?;
        if frame.event.as_deref() == Some("lagged") {
            bail!("{}", frame.data);
        }
        let event: Value =
            serde_json::from_str(&frame.data).with_context(|| format!("a bad event from {url}"))?;
        print(&event);
    }
    Ok(ExitCode::SUCCESS)
}
