//! Decoding with an `ffmpeg` child process (docs/plans/video.md §1–2): one process per source,
//! so a corrupt stream crashes only its own decoder, and frame rate, size and pixel format are
//! ffmpeg's filters. The child writes YUV4MPEG2 on its stdout ([`crate::y4m`]); its stderr is
//! kept (the last lines) to say why it stopped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use thiserror::Error;

use crate::y4m::{Y4mError, Y4mHeader, Y4mReader};

/// Lines of the child's stderr kept for error messages.
const STDERR_LINES: usize = 20;

/// What to decode and how.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// A file path or a URL ffmpeg reads.
    pub input: String,
    /// Analysed frames per second (ffmpeg's `fps` filter, rounding up so that frame k of a
    /// constant-rate file is at k / fps exactly).
    pub fps: f32,
    /// The analysed frames' width; the height keeps the aspect ratio (even).
    pub width: u32,
    /// The `ffmpeg` program (default: `ffmpeg` on PATH).
    pub program: PathBuf,
}

impl DecodeOptions {
    pub fn new(input: impl Into<String>) -> DecodeOptions {
        DecodeOptions {
            input: input.into(),
            fps: 5.0,
            width: 640,
            program: PathBuf::from("ffmpeg"),
        }
    }

    /// The child's arguments: gray frames (motion needs only luma) as YUV4MPEG2 on stdout.
    pub fn args(&self) -> Vec<OsString> {
        let filter = format!("fps={}:round=up,scale={}:-2", self.fps, self.width);
        [
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            &self.input,
            "-an",
            "-sn",
            "-dn",
            "-vf",
            &filter,
            "-pix_fmt",
            "gray",
            "-f",
            "yuv4mpegpipe",
            "pipe:1",
        ]
        .iter()
        .map(OsString::from)
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
}

/// Frames from a running `ffmpeg`, until it ends; dropping it kills the child.
pub struct Decoder {
    child: Child,
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
        let mut child = Command::new(&options.program)
            .args(options.args())
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
        Ok(Decoder {
            child,
            reader: None,
            stderr,
            stderr_thread: Some(stderr_thread),
            input: options.input.clone(),
        })
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
                let stdout = self.child.stdout.take().expect("stdout is piped");
                match Y4mReader::new(BufReader::new(stdout)) {
                    Ok(reader) => self.reader.insert(reader).next_frame(frame),
                    Err(error) => Err(error),
                }
            }
        };
        match result {
            Ok(true) => Ok(true),
            Ok(false) => {
                let status = self.child.wait().ok();
                if status.is_some_and(|s| s.success()) {
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
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        if let Some(thread) = self.stderr_thread.take() {
            let _ = thread.join();
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

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
}
