//! The access log's records and the bounded channel they leave the request path through. The
//! gateway never writes files: whoever holds the receiving end (the binary) does, so that a
//! request never waits on a disk, and a record that finds the channel full is dropped and
//! counted instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

/// How long [`AccessLogReader::blocking_recv`] lets records gather once it has handed out all
/// there were: a line reaches the file at most this much later, and the writer wakes at most
/// this often under load instead of once per request.
const GATHER: Duration = Duration::from_millis(10);

/// One request as the access log tells it.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessRecord {
    /// When the request arrived.
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: String,
    /// The Host header as sent (or the request URI's authority); empty when there was none.
    pub host: String,
    /// The path without the query string, which may carry secrets.
    pub path: String,
    /// What the client got: the replica's status, or the gateway's own.
    pub status: u16,
    /// Response body bytes sent to the client (for an upgraded connection, all bytes).
    pub bytes_out: u64,
    /// From arrival to the end of the response body (for an upgraded connection, its close).
    pub duration: Duration,
    /// The service whose route matched.
    pub service: Option<Arc<str>>,
    /// The Run of the replica that answered.
    pub run: Option<Arc<str>>,
    /// The gateway's error code when it answered itself (`no_ready_replica`, …).
    pub error: Option<&'static str>,
}

impl AccessRecord {
    /// The record as one JSON object, keys in the order above, and a newline. One allocation:
    /// the time and the address are written straight into the line.
    pub fn to_json_line(&self) -> String {
        let line = Line {
            time: Shown(humantime::format_rfc3339_millis(self.time)),
            client: Shown(self.client),
            method: &self.method,
            host: &self.host,
            path: &self.path,
            status: self.status,
            bytes_out: self.bytes_out,
            duration_ms: (self.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            service: self.service.as_deref(),
            run: self.run.as_deref(),
            error: self.error,
        };
        // Room for a typical line, so that it is written without growing.
        let mut text = Vec::with_capacity(320);
        if serde_json::to_writer(&mut text, &line).is_err() {
            return String::new();
        }
        text.push(b'\n');
        String::from_utf8(text).unwrap_or_default()
    }
}

/// A value written into JSON as the string its `Display` gives, without a `String` between.
struct Shown<T>(T);

impl<T: std::fmt::Display> serde::Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// An access log line as written: a struct rather than a map so that the keys keep their
/// order and `time` comes first, as people reading the file expect.
#[derive(serde::Serialize)]
struct Line<'r> {
    time: Shown<humantime::Rfc3339Timestamp>,
    client: Shown<SocketAddr>,
    method: &'r str,
    host: &'r str,
    path: &'r str,
    status: u16,
    bytes_out: u64,
    duration_ms: f64,
    service: Option<&'r str>,
    run: Option<&'r str>,
    error: Option<&'r str>,
}

/// The sending end of the access log, handed to the gateway in [`crate::Settings`].
#[derive(Clone, Debug)]
pub struct AccessLog {
    sender: mpsc::Sender<AccessRecord>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// An access log that buffers up to `capacity` records for the writer.
    pub fn channel(capacity: usize) -> (AccessLog, AccessLogReader) {
        let (sender, records) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let log = AccessLog {
            sender,
            dropped: dropped.clone(),
        };
        (log, AccessLogReader { records, dropped })
    }

    /// Hands `record` to the writer without waiting; when the writer is behind (or gone) the
    /// record is dropped and counted.
    pub fn record(&self, record: AccessRecord) {
        if self.sender.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer's end of the access log.
#[derive(Debug)]
pub struct AccessLogReader {
    records: mpsc::Receiver<AccessRecord>,
    dropped: Arc<AtomicU64>,
}

impl AccessLogReader {
    /// The next record; `None` once every [`AccessLog`] is gone.
    pub async fn recv(&mut self) -> Option<AccessRecord> {
        self.records.recv().await
    }

    /// As [`AccessLogReader::recv`], for a writer on a thread of its own. Once the channel is
    /// empty it lets records gather for a moment (10 ms) before it waits: a writer that keeps up
    /// would otherwise be woken for nearly every record, which under load costs a futex wake
    /// on the request path and two context switches per request, more than the line itself.
    pub fn blocking_recv(&mut self) -> Option<AccessRecord> {
        match self.records.try_recv() {
            Ok(record) => return Some(record),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        std::thread::sleep(GATHER);
        self.records.blocking_recv()
    }

    /// A record if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<AccessRecord> {
        self.records.try_recv().ok()
    }

    /// Records dropped so far, as [`AccessLog::dropped`].
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "10.0.0.7:5555".parse().unwrap(),
            method: "GET".into(),
            host: "chat.lan".into(),
            path: path.into(),
            status: 200,
            bytes_out: 42,
            duration: Duration::from_micros(1_234_567),
            service: Some("chat".into()),
            run: Some("chat-3".into()),
            error: None,
        }
    }

    #[test]
    fn a_record_is_one_json_line() {
        let line = record("/v1/\"x\"\n").to_json_line();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["client"], "10.0.0.7:5555");
        assert_eq!(value["path"], "/v1/\"x\"\n");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes_out"], 42);
        assert_eq!(value["duration_ms"], 1234.567);
        assert_eq!(value["service"], "chat");
        assert_eq!(value["run"], "chat-3");
        assert_eq!(value["error"], serde_json::Value::Null);
        assert!(line.starts_with("{\"time\":"), "{line}");
    }

    #[test]
    fn a_blocking_reader_gets_every_record_and_then_the_end() {
        let (log, mut reader) = AccessLog::channel(8);
        log.record(record("/before"));
        let sender = std::thread::spawn(move || {
            log.record(record("/later"));
        });
        assert_eq!(reader.blocking_recv().unwrap().path, "/before");
        assert_eq!(reader.blocking_recv().unwrap().path, "/later");
        sender.join().unwrap();
        assert!(reader.blocking_recv().is_none(), "every sender is gone");
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let (log, mut receiver) = AccessLog::channel(2);
        for i in 0..5 {
            log.record(record(&format!("/{i}")));
        }
        assert_eq!((log.dropped(), receiver.dropped()), (3, 3));
        assert_eq!(receiver.try_recv().unwrap().path, "/0");
        assert_eq!(receiver.try_recv().unwrap().path, "/1");
        assert!(receiver.try_recv().is_none());
        drop(receiver);
        log.record(record("/gone"));
        assert_eq!(log.dropped(), 4, "no writer: dropped too");
    }
}
