//! A small reader of `text/event-stream` (the WHATWG server-sent events format): enough for
//! the control API's event stream, which sends `id`, `event` and one `data` line per event.

use futures::{Stream, StreamExt};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Turns a byte stream into frames; comment lines (keep-alives) are skipped.
pub fn events<S, B>(bytes: S) -> impl Stream<Item = std::io::Result<Frame>>
where
    S: Stream<Item = std::io::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), Frame::default(), false),
        |(mut bytes, mut buffer, mut frame, mut has_data)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if has_data {
                            let done = std::mem::take(&mut frame);
                            return Some((Ok(done), (bytes, buffer, frame, false)));
                        }
                        frame = Frame::default();
                        continue;
                    }
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = match line.split_once(':') {
                        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                        None => (line, ""),
                    };
                    match field {
                        "id" => frame.id = Some(value.to_string()),
                        "event" => frame.event = Some(value.to_string()),
                        "data" => {
                            if has_data {
                                frame.data.push('\n');
                            }
                            frame.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                    continue;
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(chunk.as_ref()),
                    Some(Err(error)) => {
                        return Some((Err(error), (bytes, buffer, frame, has_data)))
                    }
                    None => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_across_chunks_and_keep_alives_are_skipped() {
        let chunks: Vec<std::io::Result<&[u8]>> = vec![
            Ok(b": keep-alive\n\nid: 7\nevent: run_started\nda"),
            Ok(b"ta: {\"a\":1}\n\nid: 8\r\ndata: x\r\n"),
            Ok(b"data: y\r\n\r\n"),
        ];
        let frames: Vec<Frame> = events(futures::stream::iter(chunks))
            .map(|f| f.unwrap())
            .collect()
            .await;
        assert_eq!(
            frames,
            vec![
                Frame {
                    id: Some("7".into()),
                    event: Some("run_started".into()),
                    data: "{\"a\":1}".into()
                },
                Frame {
                    id: Some("8".into()),
                    event: None,
                    data: "x\ny".into()
                },
            ]
        );
    }
}
