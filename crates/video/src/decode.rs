//! Decoding with an `ffmpeg` child process (docs/plans/video.md §1–2): one process per source,
//! so a corrupt stream crashes only its own decoder, and frame rate, size and pixel format are
//! ffmpeg's filters. The child writes YUV4MPEG2 on its stdout ([`crate::y4m`]); its stderr is
//! kept (the last lines) to say why it stopped.
//!
//! Live sources (cameras) differ from files in a few flags: one decoding thread each, so that
//! many streams do not oversubscribe the cores; RTSP over TCP unless told otherwise; and a
//! socket timeout, whose flag changed in FFmpeg 5 (RTSP's `-stimeout` became `-timeout`, which
//! in 4.x meant "listen"), so the program's version is read once. A watchdog that sees no
//! frame for too long kills the child through a [`DecoderKiller`] while another thread is
//! blocked reading it. Live frames are stamped by the caller with the wall clock as they are
//! read; nothing here keeps time.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;

use crate::y4m::{Y4mError, Y4mHeader, Y4mReader};

/// Lines of the child's stderr kept for error messages.
const STDERR_LINES: usize = 20;

/// How RTSP carries the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtspTransport {
    /// Interleaved in the RTSP connection: no packets lost to a busy LAN, one port.
    #[default]
    Tcp,
    /// RTP over UDP, for servers that offer nothing else.
    Udp,
}

impl RtspTransport {
    /// As ffmpeg's `-rtsp_transport` and the config name it.
    pub fn as_str(self) -> &'static str {
        match self {
            RtspTransport::Tcp => "tcp",
            RtspTransport::Udp => "udp",
        }
    }
}

impl FromStr for RtspTransport {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<RtspTransport, DecodeError> {
        match s {
            "tcp" => Ok(RtspTransport::Tcp),
            "udp" => Ok(RtspTransport::Udp),
            other => Err(DecodeError::RtspTransport(other.to_string())),
        }
    }
}

/// Which FFmpeg a program is, as far as its flags go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfmpegVersion {
    /// A release, by its major version: distribution builds (`4.4.2-0ubuntu0.22.04.1`,
    /// `5.1.9-0+deb12u1`) and static builds of a release branch (`n7.1-153-g…`).
    Release { major: u32 },
    /// A build of FFmpeg's development branch (`N-118437-g4d9cdf82ee`): it names no release,
    /// and is taken to have the newest flags, those of the releases it comes after. Only a
    /// snapshot from before FFmpeg 5.0 (January 2022) would be wrong; set
    /// [`DecodeOptions::ffmpeg_version`] for one.
    Development,
}

impl FfmpegVersion {
    /// The RTSP socket I/O timeout's flag (in µs): `-stimeout` before FFmpeg 5, where
    /// `-timeout` meant a listening timeout, `-timeout` from 5 on, where `-stimeout` is gone.
    pub fn rtsp_timeout_flag(self) -> &'static str {
        match self {
            FfmpegVersion::Release { major } if major < 5 => "-stimeout",
            _ => "-timeout",
        }
    }
}

/// The version in `ffmpeg -version`'s output (its first line: `ffmpeg version 5.1.9-0+deb12u1
/// Copyright …`); `None` when it names none this understands.
pub fn parse_ffmpeg_version(output: &str) -> Option<FfmpegVersion> {
    let version = output
        .lines()
        .next()?
        .trim()
        .strip_prefix("ffmpeg version ")?
        .split_whitespace()
        .next()?;
    if version.starts_with("N-") {
        return Some(FfmpegVersion::Development);
    }
    let number = version.strip_prefix('n').unwrap_or(version);
    let digits = number.len()
        - number
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    if digits == 0 || digits > 3 {
        // No number, or a date (`2024-12-11-git-…` builds): no release to go by.
        return None;
    }
    match number[digits..].chars().next() {
        None | Some('.') | Some('-') => Some(FfmpegVersion::Release {
            major: number[..digits].parse().ok()?,
        }),
        Some(_) => None,
    }
}

/// The version of the ffmpeg `program`, from `program -version`, which runs once per program
/// for the life of the process.
pub fn ffmpeg_version(program: &Path) -> Result<FfmpegVersion, DecodeError> {
    static KNOWN: OnceLock<Mutex<HashMap<PathBuf, FfmpegVersion>>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(version) = known.lock().unwrap_or_else(|p| p.into_inner()).get(program) {
        return Ok(*version);
    }
    let output = Command::new(program)
        .arg("-version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| DecodeError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = parse_ffmpeg_version(&stdout).ok_or_else(|| DecodeError::Version {
        program: program.display().to_string(),
        first_line: stdout.lines().next().unwrap_or("").to_string(),
    })?;
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(program.to_path_buf(), version);
    Ok(version)
}

/// Whether `source` is something a stream may be read from: an `rtsp`, `rtsps`, `http` or
/// `https` URL with a host, or an absolute file path. Anything else (another of ffmpeg's
/// protocols, such as `file:`, `concat:` or `pipe:`, a relative path, an option) is refused
/// with the reason.
pub fn validate_source(source: &str) -> Result<(), String> {
    if source.trim().is_empty() {
        return Err(
            "the source is empty: give an rtsp://, rtsps://, http:// or https:// URL \
                    or an absolute file path"
                .to_string(),
        );
    }
    if source.trim() != source {
        return Err(format!(
            "the source {source:?} has spaces around it: give the URL or path alone"
        ));
    }
    if let Some(c) = source.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the source {source:?} has a control character ({c:?}) in it"
        ));
    }
    if source.starts_with('/') {
        return Ok(());
    }
    if let Some((scheme, rest)) = source.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if !["rtsp", "rtsps", "http", "https"].contains(&scheme.as_str()) {
            return Err(format!(
                "the source {source:?} is a {scheme}:// URL: only rtsp, rtsps, http and https \
                 URLs, and absolute file paths, are read"
            ));
        }
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit('@').next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') {
            return Err(format!("the source {source:?} has no host"));
        }
        return Ok(());
    }
    Err(format!(
        "the source {source:?} is neither a URL nor an absolute path: give an rtsp://, \
         rtsps://, http:// or https:// URL, or a path starting with /"
    ))
}

/// The scheme of a network input, lower-cased; `None` for a file.
fn scheme(input: &str) -> Option<String> {
    let (scheme, _) = input.split_once("://")?;
    Some(scheme.to_ascii_lowercase())
}

/// What to decode and how.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// A file path or a URL ffmpeg reads (see [`validate_source`]).
    pub input: String,
    /// Analysed frames per second (ffmpeg's `fps` filter, rounding up so that frame k of a
    /// constant-rate file is at k / fps exactly).
    pub fps: f32,
    /// The analysed frames' width; the height keeps the aspect ratio (even).
    pub width: u32,
    /// The `ffmpeg` program (default: `ffmpeg` on PATH).
    pub program: PathBuf,
    /// A live source (a camera): decoded with one thread, so that many streams share the
    /// cores instead of each taking them all.
    pub live: bool,
    /// How an `rtsp://` or `rtsps://` input is carried.
    pub rtsp_transport: RtspTransport,
    /// For network inputs, how long a socket read or write may wait before ffmpeg gives up
    /// (`None`: ffmpeg's own, which for RTSP is forever).
    pub io_timeout: Option<Duration>,
    /// The program's version when known; `None`: asked of it (once) when a flag depends on
    /// it.
    pub ffmpeg_version: Option<FfmpegVersion>,
    /// Frames with colour (YUV 4:2:0: the luma plane, then the two chroma planes at half
    /// size each way) for a detector; without it, luma only.
    pub colour: bool,
    /// Decode on an NVIDIA GPU (NVDEC, `-hwaccel cuda`); frames come back to memory for the
    /// rest of the filters. Fails at start where there is no CUDA driver.
    pub hwaccel: bool,
    /// Decode with one thread even from a file, so that several files decoded at once share
    /// the cores (archives run one decoder per core). Live sources always do.
    pub one_thread: bool,
}

impl DecodeOptions {
    pub fn new(input: impl Into<String>) -> DecodeOptions {
        DecodeOptions {
            input: input.into(),
            fps: 5.0,
            width: 640,
            program: PathBuf::from("ffmpeg"),
            live: false,
            rtsp_transport: RtspTransport::Tcp,
            io_timeout: Some(Duration::from_secs(10)),
            ffmpeg_version: None,
            colour: false,
            hwaccel: false,
            one_thread: false,
        }
    }

    /// Whether the child's flags depend on the ffmpeg version: an RTSP input with a timeout.
    pub fn needs_version(&self) -> bool {
        self.io_timeout.is_some()
            && matches!(scheme(&self.input).as_deref(), Some("rtsp" | "rtsps"))
    }

    /// The child's arguments: gray frames (motion needs only luma), or YUV 4:2:0 with
    /// [`DecodeOptions::colour`], as YUV4MPEG2 on stdout.
    /// `version` picks the RTSP timeout's flag; `None` is taken as a current ffmpeg.
    pub fn args(&self, version: Option<FfmpegVersion>) -> Vec<OsString> {
        let filter = format!("fps={}:round=up,scale={}:-2", self.fps, self.width);
        let mut input_options: Vec<String> = Vec::new();
        if self.live || self.one_thread {
            input_options.extend(["-threads".to_string(), "1".to_string()]);
        }
        if self.hwaccel {
            input_options.extend(["-hwaccel".to_string(), "cuda".to_string()]);
        }
        let timeout_us = self.io_timeout.map(|t| t.as_micros().max(1).to_string());
        match scheme(&self.input).as_deref() {
            Some("rtsp" | "rtsps") => {
                input_options.extend([
                    "-rtsp_transport".to_string(),
                    self.rtsp_transport.as_str().to_string(),
                ]);
                if let Some(us) = timeout_us {
                    let flag = version.unwrap_or(FfmpegVersion::Development);
                    input_options.extend([flag.rtsp_timeout_flag().to_string(), us]);
                }
            }
            Some("http" | "https") => {
                if let Some(us) = timeout_us {
                    input_options.extend(["-rw_timeout".to_string(), us]);
                }
            }
            _ => {}
        }
        let head = ["-hide_banner", "-nostdin", "-loglevel", "error"];
        let tail = [
            "-i",
            &self.input,
            "-an",
            "-sn",
            "-dn",
            "-vf",
            &filter,
            "-pix_fmt",
            if self.colour { "yuv420p" } else { "gray" },
            "-f",
            "yuv4mpegpipe",
            "pipe:1",
        ];
        head.iter()
            .map(OsString::from)
            .chain(input_options.into_iter().map(OsString::from))
            .chain(tail.iter().map(OsString::from))
            .collect()
    }
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("fps {0} is not a frame rate: give one above 0 and at most 120")]
    Fps(f32),
    #[error("width {0}: give 16 to 7680 pixels")]
    Width(u32),
    #[error("cannot start {program}: {source} (is ffmpeg installed? scripts/setup installs it)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{input}: ffmpeg could not decode it: {reason}")]
    Failed { input: String, reason: String },
    #[error("{input}: the decoder was killed (a watchdog or a stop)")]
    Killed { input: String },
    #[error("rtsp_transport {0:?}: give tcp or udp")]
    RtspTransport(String),
    #[error("io_timeout of 0: give at least 1 ms, or none for ffmpeg's own")]
    Timeout,
    #[error(
        "{program} -version says {first_line:?}, which names no FFmpeg version this knows: \
         set the version in the decode options"
    )]
    Version { program: String, first_line: String },
}

/// Frames from a running `ffmpeg`, until it ends; dropping it kills the child.
pub struct Decoder {
    child: Arc<Mutex<Child>>,
    killed: Arc<AtomicBool>,
    /// Until the first frame is asked for, when the reader takes it.
    stdout: Option<ChildStdout>,
    reader: Option<Y4mReader<BufReader<ChildStdout>>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
    input: String,
}

impl Decoder {
    /// Starts ffmpeg; the stream's header is read at the first frame.
    pub fn start(options: &DecodeOptions) -> Result<Decoder, DecodeError> {
        if !(options.fps > 0.0 && options.fps <= 120.0) {
            return Err(DecodeError::Fps(options.fps));
        }
        if !(16..=7680).contains(&options.width) {
            return Err(DecodeError::Width(options.width));
        }
        if options.io_timeout.is_some_and(|t| t.is_zero()) {
            return Err(DecodeError::Timeout);
        }
        let version = match options.ffmpeg_version {
            Some(version) => Some(version),
            None if options.needs_version() => Some(ffmpeg_version(&options.program)?),
            None => None,
        };
        let mut child = Command::new(&options.program)
            .args(options.args(version))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| DecodeError::Spawn {
                program: options.program.display().to_string(),
                source,
            })?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut lines = lines.lock().unwrap_or_else(|p| p.into_inner());
                if lines.len() == STDERR_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(Decoder {
            child: Arc::new(Mutex::new(child)),
            killed: Arc::new(AtomicBool::new(false)),
            stdout: Some(stdout),
            reader: None,
            stderr,
            stderr_thread: Some(stderr_thread),
            input: options.input.clone(),
        })
    }

    /// A handle that kills the child from another thread (a watchdog's), while this one may
    /// be blocked in [`Decoder::next_frame`], which then returns [`DecodeError::Killed`].
    pub fn killer(&self) -> DecoderKiller {
        DecoderKiller {
            child: Arc::clone(&self.child),
            killed: Arc::clone(&self.killed),
        }
    }

    /// The header, once the first frame was asked for.
    pub fn header(&self) -> Option<&Y4mHeader> {
        self.reader.as_ref().map(Y4mReader::header)
    }

    /// The next gray frame into `frame`; false when the input ended cleanly.
    pub fn next_frame(&mut self, frame: &mut Vec<u8>) -> Result<bool, DecodeError> {
        let result = match &mut self.reader {
            Some(reader) => reader.next_frame(frame),
            None => {
                let stdout = self.stdout.take().expect("the reader takes stdout once");
                match Y4mReader::new(BufReader::new(stdout)) {
                    Ok(reader) => self.reader.insert(reader).next_frame(frame),
                    Err(error) => Err(error),
                }
            }
        };
        match result {
            Ok(true) => Ok(true),
            Ok(false) => {
                let status = self.lock_child().wait().ok();
                if self.killed.load(Ordering::SeqCst) {
                    Err(self.failed(None))
                } else if status.is_some_and(|s| s.success()) {
                    Ok(false)
                } else {
                    Err(self.failed(None))
                }
            }
            Err(error) => Err(self.failed(Some(error))),
        }
    }

    /// The error for a child that stopped: its stderr's last lines, else what the reader saw.
    fn failed(&mut self, read_error: Option<Y4mError>) -> DecodeError {
        let status = {
            let mut child = self.lock_child();
            let _ = child.kill();
            child.wait().ok()
        };
        if let Some(thread) = self.stderr_thread.take() {
            let _ = thread.join();
        }
        if self.killed.load(Ordering::SeqCst) {
            return DecodeError::Killed {
                input: self.input.clone(),
            };
        }
        let lines = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let reason = if !lines.is_empty() {
            lines.iter().cloned().collect::<Vec<_>>().join("; ")
        } else if let Some(error) = read_error {
            error.to_string()
        } else {
            format!(
                "it exited with {}",
                status.map_or("an unknown status".to_string(), |s| s.to_string())
            )
        };
        DecodeError::Failed {
            input: self.input.clone(),
            reason,
        }
    }
}

impl Decoder {
    fn lock_child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let mut child = self.lock_child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Kills a [`Decoder`]'s child from any thread; cheap to clone. Killing a decoder that has
/// already stopped (or was dropped) does nothing: its process was reaped, so no other process
/// that took its id can be hit.
#[derive(Debug, Clone)]
pub struct DecoderKiller {
    child: Arc<Mutex<Child>>,
    killed: Arc<AtomicBool>,
}

impl DecoderKiller {
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let _ = self.child.lock().unwrap_or_else(|p| p.into_inner()).kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-second 25 fps test pattern.
    fn clip(dir: &std::path::Path) -> String {
        crate::test_clips::make(
            &dir.join("testsrc.mp4"),
            "testsrc=size=320x240:rate=25:duration=2",
            &["-pix_fmt", "yuv420p"],
        )
    }

    #[test]
    fn a_file_decodes_to_gray_frames_at_the_asked_rate_and_width() {
        let dir = tempfile::tempdir().unwrap();
        let options = DecodeOptions {
            fps: 5.0,
            width: 160,
            ..DecodeOptions::new(clip(dir.path()))
        };
        let mut decoder = Decoder::start(&options).unwrap();
        let mut frame = Vec::new();
        let mut frames = 0;
        while decoder.next_frame(&mut frame).unwrap() {
            frames += 1;
            assert_eq!(frame.len(), 160 * 120);
        }
        // 2 s at 5 fps.
        assert_eq!(frames, 10);
        let header = decoder.header().unwrap();
        assert_eq!((header.width, header.height), (160, 120));
        assert_eq!(header.rate, Some((5, 1)));
    }

    #[test]
    fn colour_frames_carry_both_chroma_planes_after_the_luma() {
        let dir = tempfile::tempdir().unwrap();
        let options = DecodeOptions {
            width: 160,
            colour: true,
            ..DecodeOptions::new(clip(dir.path()))
        };
        let mut decoder = Decoder::start(&options).unwrap();
        let mut frame = Vec::new();
        assert!(decoder.next_frame(&mut frame).unwrap());
        assert_eq!(frame.len(), 160 * 120 + 2 * (80 * 60));
    }

    #[test]
    fn nvdec_is_an_input_option_and_fails_clearly_without_a_driver() {
        let options = DecodeOptions {
            hwaccel: true,
            ..DecodeOptions::new("/srv/a.mp4")
        };
        let args: Vec<String> = options
            .args(None)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let hw = args.iter().position(|a| a == "-hwaccel").unwrap();
        let input = args.iter().position(|a| a == "-i").unwrap();
        assert!(hw < input && args[hw + 1] == "cuda", "{args:?}");
        if std::path::Path::new("/dev/nvidia0").exists() {
            return;
        }
        // Here there is no CUDA driver: ffmpeg says so, and the stream gets its words.
        let dir = tempfile::tempdir().unwrap();
        let mut frame = Vec::new();
        let error = Decoder::start(&DecodeOptions {
            hwaccel: true,
            ..DecodeOptions::new(clip(dir.path()))
        })
        .unwrap()
        .next_frame(&mut frame)
        .unwrap_err()
        .to_string();
        assert!(error.contains("cuda") || error.contains("CUDA"), "{error}");
    }

    #[test]
    fn a_missing_or_corrupt_file_is_ffmpeg_s_own_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut frame = Vec::new();
        let missing = dir.path().join("nope.mp4");
        let error = Decoder::start(&DecodeOptions::new(missing.to_string_lossy()))
            .unwrap()
            .next_frame(&mut frame)
            .unwrap_err()
            .to_string();
        assert!(error.contains("No such file or directory"), "{error}");
        let corrupt = dir.path().join("corrupt.mp4");
        std::fs::write(&corrupt, b"this is not a video at all").unwrap();
        let error = Decoder::start(&DecodeOptions::new(corrupt.to_string_lossy()))
            .unwrap()
            .next_frame(&mut frame)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "{}: ffmpeg could not decode it: ",
                corrupt.display()
            )),
            "{error}"
        );
        assert!(error.contains("Invalid data"), "{error}");
    }

    #[test]
    fn bad_options_and_a_missing_program_are_clear_errors() {
        let bad = |options: DecodeOptions| Decoder::start(&options).err().unwrap().to_string();
        assert!(bad(DecodeOptions {
            fps: 0.0,
            ..DecodeOptions::new("x")
        })
        .contains("fps 0"));
        assert!(bad(DecodeOptions {
            width: 8,
            ..DecodeOptions::new("x")
        })
        .contains("width 8"));
        let error = bad(DecodeOptions {
            program: PathBuf::from("/nonexistent/ffmpeg"),
            ..DecodeOptions::new("x")
        });
        assert!(
            error.contains("cannot start /nonexistent/ffmpeg"),
            "{error}"
        );
    }

    /// The arguments as strings.
    fn args_of(options: &DecodeOptions, version: Option<FfmpegVersion>) -> Vec<String> {
        options
            .args(version)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    /// What comes between the global options and `-i`.
    fn input_options(options: &DecodeOptions, version: Option<FfmpegVersion>) -> Vec<String> {
        let args = args_of(options, version);
        let i = args.iter().position(|a| a == "-i").unwrap();
        assert_eq!(
            args[..4],
            ["-hide_banner", "-nostdin", "-loglevel", "error"]
        );
        assert_eq!(args[i + 1], options.input);
        args[4..i].to_vec()
    }

    #[test]
    fn live_sources_decode_on_one_thread_and_network_ones_get_their_transport_and_timeout() {
        let v5 = Some(FfmpegVersion::Release { major: 5 });
        let file = DecodeOptions::new("/videos/a.mp4");
        assert!(!file.needs_version());
        assert!(input_options(&file, v5).is_empty());
        let live_file = DecodeOptions {
            live: true,
            ..file.clone()
        };
        assert_eq!(input_options(&live_file, None), ["-threads", "1"]);
        let archive_file = DecodeOptions {
            one_thread: true,
            ..file.clone()
        };
        assert_eq!(input_options(&archive_file, None), ["-threads", "1"]);

        let camera = DecodeOptions {
            live: true,
            ..DecodeOptions::new("rtsp://192.168.1.20:554/stream2")
        };
        assert!(camera.needs_version());
        assert_eq!(
            input_options(&camera, v5),
            [
                "-threads",
                "1",
                "-rtsp_transport",
                "tcp",
                "-timeout",
                "10000000"
            ]
        );
        // FFmpeg 4.x: -timeout would make it listen; the socket timeout is -stimeout.
        assert_eq!(
            input_options(&camera, Some(FfmpegVersion::Release { major: 4 })),
            [
                "-threads",
                "1",
                "-rtsp_transport",
                "tcp",
                "-stimeout",
                "10000000"
            ]
        );
        for version in [Some(FfmpegVersion::Development), None] {
            assert_eq!(input_options(&camera, version)[4], "-timeout");
        }
        let udp = DecodeOptions {
            rtsp_transport: RtspTransport::Udp,
            io_timeout: Some(Duration::from_millis(2500)),
            ..DecodeOptions::new("rtsps://cam.local/live")
        };
        assert_eq!(
            input_options(&udp, v5),
            ["-rtsp_transport", "udp", "-timeout", "2500000"]
        );

        let http = DecodeOptions::new("http://cam.local/video.mjpg");
        assert!(!http.needs_version());
        assert_eq!(input_options(&http, None), ["-rw_timeout", "10000000"]);
        let https = DecodeOptions {
            io_timeout: None,
            ..DecodeOptions::new("HTTPS://cam.local/video.mjpg")
        };
        assert!(input_options(&https, None).is_empty());
        let untimed_rtsp = DecodeOptions {
            io_timeout: None,
            ..DecodeOptions::new("rtsp://cam.local/live")
        };
        assert!(!untimed_rtsp.needs_version());
        assert_eq!(
            input_options(&untimed_rtsp, None),
            ["-rtsp_transport", "tcp"]
        );
    }

    #[test]
    fn this_ffmpeg_takes_the_network_flags_and_says_why_it_could_not_connect() {
        // Nothing listens on port 1: the error must be the connection's, not a flag this
        // ffmpeg does not know (as -stimeout would be to FFmpeg 5 and later).
        let mut frame = Vec::new();
        for input in ["rtsp://127.0.0.1:1/cam", "http://127.0.0.1:1/cam"] {
            let options = DecodeOptions {
                live: true,
                ..DecodeOptions::new(input)
            };
            let error = Decoder::start(&options)
                .unwrap()
                .next_frame(&mut frame)
                .unwrap_err()
                .to_string();
            assert!(error.contains("Connection refused"), "{input}: {error}");
        }
    }

    #[test]
    fn rtsp_transport_is_tcp_or_udp() {
        assert_eq!("tcp".parse::<RtspTransport>().unwrap(), RtspTransport::Tcp);
        assert_eq!("udp".parse::<RtspTransport>().unwrap(), RtspTransport::Udp);
        assert_eq!(RtspTransport::default().as_str(), "tcp");
        let error = "http".parse::<RtspTransport>().unwrap_err().to_string();
        assert_eq!(error, "rtsp_transport \"http\": give tcp or udp");
    }

    #[test]
    fn versions_are_read_from_real_version_lines() {
        let release = |major| Some(FfmpegVersion::Release { major });
        for (line, version) in [
            // Ubuntu 22.04.
            (
                "ffmpeg version 4.4.2-0ubuntu0.22.04.1 Copyright (c) 2000-2021 the FFmpeg developers",
                release(4),
            ),
            // Debian 12 (this project's CI).
            (
                "ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026 the FFmpeg developers",
                release(5),
            ),
            // Ubuntu 24.04.
            (
                "ffmpeg version 6.1.1-3ubuntu5 Copyright (c) 2000-2023 the FFmpeg developers",
                release(6),
            ),
            // imageio-ffmpeg's static 7.1, and a static build of the 7.1 branch.
            (
                "ffmpeg version 7.1 Copyright (c) 2000-2024 the FFmpeg developers",
                release(7),
            ),
            (
                "ffmpeg version n7.1-153-gaeb8631048-20250109 Copyright (c) 2000-2024 the FFmpeg developers",
                release(7),
            ),
            ("ffmpeg version 7.0.2-static https://johnvansickle.com/ffmpeg/  Copyright (c) 2000-2024 the FFmpeg developers", release(7)),
            // Development-branch builds.
            (
                "ffmpeg version N-118437-g4d9cdf82ee Copyright (c) 2000-2025 the FFmpeg developers",
                Some(FfmpegVersion::Development),
            ),
            // Dated git builds name no release; neither do other programs.
            (
                "ffmpeg version 2024-12-11-git-a518b5540d-full_build-www.gyan.dev Copyright",
                None,
            ),
            ("ffmpeg version unknown", None),
            ("ffprobe version 5.1.9-0+deb12u1", None),
            ("", None),
        ] {
            assert_eq!(parse_ffmpeg_version(line), version, "{line}");
        }
        // The whole output: the first line counts.
        assert_eq!(
            parse_ffmpeg_version(
                "ffmpeg version 6.1.1-3ubuntu5 Copyright\nbuilt with gcc 13\nlibavutil 58. 29.100"
            ),
            release(6)
        );
        assert_eq!(release(4).unwrap().rtsp_timeout_flag(), "-stimeout");
        assert_eq!(release(5).unwrap().rtsp_timeout_flag(), "-timeout");
        assert_eq!(FfmpegVersion::Development.rtsp_timeout_flag(), "-timeout");
    }

    #[test]
    fn the_installed_ffmpeg_s_version_is_read_and_a_program_that_is_not_ffmpeg_is_refused() {
        let version = ffmpeg_version(Path::new("ffmpeg")).unwrap();
        assert!(
            matches!(version, FfmpegVersion::Release { major } if major >= 4)
                || version == FfmpegVersion::Development,
            "{version:?}"
        );
        // Asked again, the answer is the same (and not asked of the program again).
        assert_eq!(ffmpeg_version(Path::new("ffmpeg")).unwrap(), version);
        let error = ffmpeg_version(Path::new("/bin/echo"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "/bin/echo -version says \"-version\", which names no FFmpeg version this knows: \
             set the version in the decode options"
        );
        // A camera through a program that is not ffmpeg fails before anything starts.
        let options = DecodeOptions {
            program: PathBuf::from("/bin/echo"),
            ..DecodeOptions::new("rtsp://cam.local/live")
        };
        assert!(matches!(
            Decoder::start(&options),
            Err(DecodeError::Version { .. })
        ));
        let zero = DecodeOptions {
            io_timeout: Some(Duration::ZERO),
            ..DecodeOptions::new("rtsp://cam.local/live")
        };
        assert!(matches!(Decoder::start(&zero), Err(DecodeError::Timeout)));
    }

    #[test]
    fn sources_are_network_urls_or_absolute_paths() {
        for good in [
            "rtsp://192.168.1.20:554/stream2",
            "rtsps://user:secret@cam.local/live",
            "http://cam.local/video.mjpg",
            "HTTPS://cam.local:8443/hls/index.m3u8?token=x",
            "/media/usb/recordings/2026-11-29 front.mp4",
        ] {
            assert_eq!(validate_source(good), Ok(()), "{good}");
        }
        for (bad, reason) in [
            ("", "the source is empty"),
            ("   ", "the source is empty"),
            (" rtsp://cam.local/live", "has spaces around it"),
            ("rtsp://cam.local/live\n", "has spaces around it"),
            ("/videos/a\u{7}.mp4", "control character"),
            (
                "ftp://nas.local/a.mp4",
                "is a ftp:// URL: only rtsp, rtsps, http and https",
            ),
            ("file:///etc/passwd", "is a file:// URL"),
            ("concat:/a.mp4|/b.mp4", "neither a URL nor an absolute path"),
            ("videos/a.mp4", "neither a URL nor an absolute path"),
            ("-i", "neither a URL nor an absolute path"),
            ("rtsp://", "has no host"),
            ("http:///path", "has no host"),
            ("rtsp://user@:554/live", "has no host"),
        ] {
            let error = validate_source(bad).unwrap_err();
            assert!(error.contains(reason), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_killer_stops_a_decoder_another_thread_is_reading() {
        // A minute of test pattern at its own pace (-re), as a camera would send it: the
        // program is a wrapper that reads the input as a lavfi graph in real time.
        let dir = tempfile::tempdir().unwrap();
        let wrapper = dir.path().join("ffmpeg-re");
        std::fs::write(&wrapper, "#!/bin/sh\nexec ffmpeg -re -f lavfi \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let options = DecodeOptions {
            program: wrapper,
            live: true,
            fps: 25.0,
            width: 160,
            ..DecodeOptions::new("testsrc=size=160x120:rate=25:duration=60")
        };
        let mut decoder = Decoder::start(&options).unwrap();
        let killer = decoder.killer();
        let (first_frame, first_frame_read) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut frame = Vec::new();
            let mut frames = 0u32;
            let result = loop {
                match decoder.next_frame(&mut frame) {
                    Ok(true) => {
                        frames += 1;
                        if frames == 1 {
                            first_frame.send(()).unwrap();
                        }
                    }
                    other => break other,
                }
            };
            (frames, result)
        });
        first_frame_read.recv().unwrap();
        let watchdog = killer.clone();
        std::thread::spawn(move || watchdog.kill()).join().unwrap();
        let (frames, result) = reader.join().unwrap();
        // Stopped long before the minute's 1,500 frames.
        assert!(frames < 1_500, "{frames}");
        match result {
            Err(DecodeError::Killed { input }) => assert_eq!(input, options.input),
            other => panic!("{other:?}"),
        }
        // The decoder is gone (dropped with the thread): killing again does nothing.
        killer.kill();
    }
}
