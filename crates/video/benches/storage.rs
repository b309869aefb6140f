//! How fast the video service's storage is: JPEG snapshots of an analysed frame, events and
//! pictures recorded in `video.sqlite`, and a retention sweep. Run with
//! `cargo bench -p video --bench storage`; it prints one line a measurement and asserts nothing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use video::snapshot::{self, Frame, DEFAULT_MARGIN, DEFAULT_QUALITY};
use video::{BoxF, EventKind, NewEvent, Retention, VideoDb};

/// Runs `work` `rounds` times and prints the mean and the best round.
fn measure(what: &str, rounds: u32, mut work: impl FnMut()) {
    let mut best = Duration::MAX;
    let started = Instant::now();
    for _ in 0..rounds {
        let round = Instant::now();
        work();
        best = best.min(round.elapsed());
    }
    let mean = started.elapsed() / rounds;
    println!("{what:<48} mean {mean:>10.2?}  best {best:>10.2?}  ({rounds} rounds)");
}

/// A frame with edges and texture, closer to camera footage than a flat field.
fn textured(width: usize, height: usize, channels: usize) -> Vec<u8> {
    (0..width * height * channels)
        .map(|i| {
            let (x, y) = ((i / channels) % width, (i / channels) / width);
            ((x * 3 + y * 5 + (x * y) % 17 + i % channels * 40) % 256) as u8
        })
        .collect()
}

fn main() {
    let (width, height) = (1280, 720);
    let gray = textured(width, height, 1);
    let rgb = textured(width, height, 3);
    let gray_frame = Frame::gray(&gray, width, height).unwrap();
    let rgb_frame = Frame::rgb24(&rgb, width, height).unwrap();
    let mut sizes = Vec::new();
    measure("JPEG 1280×720 gray, whole frame", 20, || {
        sizes.push(
            snapshot::encode(&gray_frame, None, DEFAULT_QUALITY)
                .unwrap()
                .len(),
        );
    });
    measure("JPEG 1280×720 RGB24, whole frame", 20, || {
        black_box(snapshot::encode(&rgb_frame, None, DEFAULT_QUALITY).unwrap());
    });
    let person = BoxF::new(600.0, 200.0, 680.0, 420.0);
    let region = snapshot::crop_around(&person, DEFAULT_MARGIN, width, height).unwrap();
    measure("JPEG gray crop around an 80×220 box", 200, || {
        black_box(snapshot::encode(&gray_frame, Some(region), DEFAULT_QUALITY).unwrap());
    });
    println!(
        "  (a whole gray frame is {} bytes at quality {DEFAULT_QUALITY})",
        sizes[0]
    );

    let dir = tempfile::tempdir().unwrap();
    let mut db = VideoDb::open(dir.path()).unwrap();
    let object = db.start_object("front", "person", None, 0).unwrap();
    let mut time = 0;
    measure("insert_event (one transaction each)", 2_000, || {
        time += 1;
        let event = NewEvent {
            object: Some(object),
            zone: Some("door".into()),
            ..NewEvent::new(time, "front", EventKind::ZoneEntered)
        };
        black_box(db.insert_event(&event).unwrap());
    });
    let picture = snapshot::encode(&gray_frame, Some(region), DEFAULT_QUALITY).unwrap();
    let objects = 2_000;
    measure(
        "start, picture and end an object (two fsyncs)",
        objects,
        || {
            time += 1;
            let id = db.start_object("front", "person", None, time).unwrap();
            db.end_object(id, time, 0.9, [600.0, 200.0, 680.0, 420.0], Some(&picture))
                .unwrap();
        },
    );
    let retention = Retention {
        max_age_ms: None,
        max_bytes: Some(picture.len() as u64 * u64::from(objects) / 2),
    };
    measure("sweep half of the objects by size", 1, || {
        let report = db.sweep(&retention, time).unwrap();
        println!(
            "  ({} objects, {} files removed)",
            report.objects, report.files
        );
    });
}
