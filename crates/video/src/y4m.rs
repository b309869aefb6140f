//! Reading the YUV4MPEG2 stream an `ffmpeg … -f yuv4mpegpipe pipe:1` child writes (see
//! docs/plans/video.md §2): a header line naming size, rate and colour layout, then each frame
//! as `FRAME` (with optional parameters) and a newline before its planes. The size in the
//! header means no ffprobe is needed, and the `FRAME` marker means a reader that lost step
//! says so instead of reading garbage. Motion uses the luma plane, the first `width × height`
//! bytes of every layout.

use std::io::{self, BufRead, Read};

use thiserror::Error;

/// The most bytes a header or frame line may have: ffmpeg's are under 100.
const MAX_LINE: usize = 1024;

/// The largest frame side accepted (8K is 7680).
const MAX_SIDE: usize = 16_384;

#[derive(Debug, Error)]
pub enum Y4mError {
    #[error("not a YUV4MPEG2 stream: it starts with {0:?}")]
    NotY4m(String),
    #[error("YUV4MPEG2 header: {0}")]
    Header(String),
    #[error("frame {frame}: expected a FRAME line, got {got:?}")]
    FrameMarker { frame: u64, got: String },
    #[error("frame {frame} ends after {got} of its {expected} bytes")]
    Truncated {
        frame: u64,
        expected: usize,
        got: usize,
    },
    #[error("reading the stream: {0}")]
    Io(#[from] io::Error),
}

/// How the planes of a frame are laid out (the header's `C` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// Luma only (`Cmono`, ffmpeg's `-pix_fmt gray`).
    Mono,
    /// Chroma halved both ways (`C420jpeg`, `C420mpeg2`, `C420paldv`, `C420`: the default).
    C420,
    /// Chroma halved horizontally.
    C422,
    /// Full chroma.
    C444,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Y4mHeader {
    pub width: usize,
    pub height: usize,
    /// Frames per second as a fraction, when the header says.
    pub rate: Option<(u32, u32)>,
    pub colour: Colour,
}

impl Y4mHeader {
    /// Bytes in one frame, all planes.
    pub fn frame_len(&self) -> usize {
        let luma = self.width * self.height;
        let (cw, ch) = (self.width.div_ceil(2), self.height.div_ceil(2));
        match self.colour {
            Colour::Mono => luma,
            Colour::C420 => luma + 2 * cw * ch,
            Colour::C422 => luma + 2 * cw * self.height,
            Colour::C444 => 3 * luma,
        }
    }

    fn parse(line: &str) -> Result<Y4mHeader, Y4mError> {
        let mut tokens = line.split(' ').filter(|t| !t.is_empty());
        match tokens.next() {
            Some("YUV4MPEG2") => {}
            other => {
                return Err(Y4mError::NotY4m(
                    other.unwrap_or("").chars().take(20).collect(),
                ))
            }
        }
        let (mut width, mut height, mut rate, mut colour) = (None, None, None, Colour::C420);
        for token in tokens {
            let mut chars = token.chars();
            let key = chars.next();
            let value = chars.as_str();
            let side = |value: &str| -> Result<usize, Y4mError> {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|v| (1..=MAX_SIDE).contains(v))
                    .ok_or_else(|| {
                        Y4mError::Header(format!(
                            "{token:?}: a frame side must be 1 to {MAX_SIDE} pixels"
                        ))
                    })
            };
            match key {
                Some('W') => width = Some(side(value)?),
                Some('H') => height = Some(side(value)?),
                Some('F') => {
                    rate = value
                        .split_once(':')
                        .and_then(|(n, d)| Some((n.parse().ok()?, d.parse().ok()?)))
                        .filter(|&(_, d): &(u32, u32)| d > 0);
                    if rate.is_none() {
                        return Err(Y4mError::Header(format!(
                            "{token:?}: a rate is F<numerator>:<denominator>"
                        )));
                    }
                }
                Some('C') => {
                    colour = match value {
                        "mono" => Colour::Mono,
                        v if v.starts_with("420") => Colour::C420,
                        "422" => Colour::C422,
                        "444" => Colour::C444,
                        other => {
                            return Err(Y4mError::Header(format!(
                                "colour layout C{other} is not supported (mono, 420, 422, 444)"
                            )))
                        }
                    }
                }
                // Interlacing, aspect ratio, extensions: nothing motion needs.
                _ => {}
            }
        }
        match (width, height) {
            (Some(width), Some(height)) => Ok(Y4mHeader {
                width,
                height,
                rate,
                colour,
            }),
            _ => Err(Y4mError::Header(format!(
                "{line:?} gives no W (width) or no H (height)"
            ))),
        }
    }
}

/// Frames from a YUV4MPEG2 stream.
pub struct Y4mReader<R> {
    input: R,
    header: Y4mHeader,
    frames: u64,
}

/// One line without its newline; `None` at a clean end of input.
fn read_line(input: &mut impl BufRead) -> Result<Option<String>, Y4mError> {
    let mut line = Vec::new();
    let read = input
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

impl<R: BufRead> Y4mReader<R> {
    /// Reads the header.
    pub fn new(mut input: R) -> Result<Y4mReader<R>, Y4mError> {
        let line = read_line(&mut input)?
            .ok_or_else(|| Y4mError::NotY4m("(nothing: the stream is empty)".to_string()))?;
        let header = Y4mHeader::parse(&line)?;
        Ok(Y4mReader {
            input,
            header,
            frames: 0,
        })
    }

    pub fn header(&self) -> &Y4mHeader {
        &self.header
    }

    /// Frames read so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Reads the next frame's planes into `frame` (resized to [`Y4mHeader::frame_len`]);
    /// false at the end of the stream.
    pub fn next_frame(&mut self, frame: &mut Vec<u8>) -> Result<bool, Y4mError> {
        let Some(line) = read_line(&mut self.input)? else {
            return Ok(false);
        };
        if line != "FRAME" && !line.starts_with("FRAME ") {
            return Err(Y4mError::FrameMarker {
                frame: self.frames,
                got: line.chars().take(20).collect(),
            });
        }
        let expected = self.header.frame_len();
        frame.resize(expected, 0);
        let mut got = 0;
        while got < expected {
            match self.input.read(&mut frame[got..])? {
                0 => {
                    return Err(Y4mError::Truncated {
                        frame: self.frames,
                        expected,
                        got,
                    })
                }
                n => got += n,
            }
        }
        self.frames += 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(header: &str, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("{header}\n").into_bytes();
        for frame in frames {
            out.extend_from_slice(b"FRAME\n");
            out.extend_from_slice(frame);
        }
        out
    }

    #[test]
    fn reads_ffmpeg_s_header_and_gray_frames_to_the_end() {
        let header = "YUV4MPEG2 W4 H2 F5:1 Ip A1:1 Cmono XCOLORRANGE=LIMITED";
        let frames = vec![vec![1u8; 8], vec![2u8; 8]];
        let bytes = stream(header, &frames);
        let mut reader = Y4mReader::new(&bytes[..]).unwrap();
        assert_eq!(
            *reader.header(),
            Y4mHeader {
                width: 4,
                height: 2,
                rate: Some((5, 1)),
                colour: Colour::Mono
            }
        );
        let mut frame = Vec::new();
        for expected in &frames {
            assert!(reader.next_frame(&mut frame).unwrap());
            assert_eq!(&frame, expected);
        }
        assert!(!reader.next_frame(&mut frame).unwrap());
        assert_eq!(reader.frames(), 2);
    }

    #[test]
    fn frame_sizes_follow_the_colour_layout_with_odd_sides_rounded_up() {
        let header = |c: &str| Y4mHeader::parse(&format!("YUV4MPEG2 W5 H3 {c}")).unwrap();
        // Luma 15; chroma planes of 3 × 2.
        assert_eq!(header("C420mpeg2").frame_len(), 15 + 2 * 6);
        assert_eq!(header("C420jpeg").frame_len(), 27);
        assert_eq!(header("C422").frame_len(), 15 + 2 * 9);
        assert_eq!(header("C444").frame_len(), 45);
        assert_eq!(header("Cmono").frame_len(), 15);
        // No C: 420, as the format says.
        assert_eq!(
            Y4mHeader::parse("YUV4MPEG2 W5 H3").unwrap().colour,
            Colour::C420
        );
        // A frame line may carry parameters.
        let mut bytes = b"YUV4MPEG2 W2 H2 Cmono\nFRAME Ip\n".to_vec();
        bytes.extend_from_slice(&[9, 9, 9, 9]);
        let mut frame = Vec::new();
        assert!(Y4mReader::new(&bytes[..])
            .unwrap()
            .next_frame(&mut frame)
            .unwrap());
        assert_eq!(frame, vec![9, 9, 9, 9]);
    }

    #[test]
    fn bad_streams_are_clear_errors() {
        let error = |bytes: &[u8]| -> String {
            let mut frame = Vec::new();
            match Y4mReader::new(bytes) {
                Err(error) => error.to_string(),
                Ok(mut reader) => loop {
                    match reader.next_frame(&mut frame) {
                        Ok(true) => continue,
                        Ok(false) => panic!("no error in {bytes:?}"),
                        Err(error) => break error.to_string(),
                    }
                },
            }
        };
        assert!(error(b"").contains("empty"));
        assert!(error(b"RIFF....AVI LIST").contains("not a YUV4MPEG2 stream"));
        assert!(error(b"YUV4MPEG2 W640\n").contains("no W (width) or no H (height)"));
        assert!(error(b"YUV4MPEG2 W0 H10\n").contains("1 to 16384 pixels"));
        assert!(error(b"YUV4MPEG2 W99999 H10\n").contains("1 to 16384 pixels"));
        assert!(error(b"YUV4MPEG2 W4 H4 F25:0\n").contains("F<numerator>:<denominator>"));
        assert!(error(b"YUV4MPEG2 W4 H4 C411\n").contains("C411 is not supported"));
        // An unknown parameter, even one that is not ASCII, is skipped, not a panic.
        assert!(Y4mHeader::parse("YUV4MPEG2 W4 H4 \u{e9}t\u{e9} X").is_ok());
        // A frame cut short, and a reader out of step.
        let mut short = b"YUV4MPEG2 W2 H2 Cmono\nFRAME\n".to_vec();
        short.extend_from_slice(&[1, 2, 3]);
        assert_eq!(error(&short), "frame 0 ends after 3 of its 4 bytes");
        let mut lost = b"YUV4MPEG2 W2 H2 Cmono\nFRAME\n".to_vec();
        lost.extend_from_slice(&[1, 2, 3, 4]);
        lost.extend_from_slice(b"garbage\n");
        assert_eq!(
            error(&lost),
            "frame 1: expected a FRAME line, got \"garbage\""
        );
    }
}
