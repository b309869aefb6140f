//! The detector with the real ONNX Runtime on small models that
//! `crates/video/tests/fixtures/make_yolo.py` writes: each outputs hand-placed boxes, so every
//! number here is worked out from the script's `BOXES`. A 1280×720 image letterboxes into the
//! 640×640 input at scale 0.5 with 140 rows of padding on top: input (x, y) is image
//! (2x, 2(y − 140)).

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::*;

/// What the tests need from outside: ONNX Runtime's library and a Python with onnx, from
/// `FLOWERS_TEST_ORT` / `FLOWERS_TEST_PYTHON` (scripts/test sets them), else from
/// scripts/ort-path, which reads scripts/setup's virtual environment. Without them the tests
/// fail: they are not optional.
pub(crate) fn test_env(name: &str) -> PathBuf {
    let variable = format!("FLOWERS_TEST_{}", name.to_uppercase());
    if let Some(path) = std::env::var_os(&variable).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ort-path");
    let output = Command::new(script)
        .output()
        .expect("scripts/ort-path runs");
    assert!(
        output.status.success(),
        "{variable} is unset and scripts/ort-path failed ({}): run scripts/setup, which installs onnxruntime and onnx",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let prefix = format!("{name}=");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(PathBuf::from))
        .unwrap_or_else(|| panic!("scripts/ort-path prints no {name}="))
}

/// A folder holding the named fixture models (`v8` is `v8.onnx`).
pub(crate) fn fixture_models(names: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/make_yolo.py");
    let output = Command::new(test_env("python"))
        .arg(script)
        .arg(dir.path())
        .args(names)
        .output()
        .expect("the test Python runs");
    assert!(
        output.status.success(),
        "make_yolo.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

pub(crate) fn options(dir: &Path, model: &str) -> DetectorOptions {
    DetectorOptions::new(dir.join(format!("{model}.onnx")), test_env("ort"))
}

/// The pixels do not matter to the fixtures (their output is constant); the sizes do.
pub(crate) fn image(width: usize, height: usize) -> Vec<u8> {
    (0..width * height * 3).map(|i| (i % 251) as u8).collect()
}

fn rgb(data: &[u8], width: usize, height: usize) -> RgbImage<'_> {
    RgbImage {
        width,
        height,
        data,
    }
}

fn detected(class: usize, label: &str, score: f32, bbox: [f32; 4]) -> Detected {
    Detected {
        class,
        label: label.into(),
        score,
        bbox: BoxF::new(bbox[0], bbox[1], bbox[2], bbox[3]),
    }
}

/// Person A (person B lost to it in NMS), the dog, the toy clamped at the right and bottom
/// edges; the toy wholly in the padding is gone, the 0.2 person under the threshold.
pub(crate) fn expected_1280x720() -> Vec<Detected> {
    vec![
        detected(0, "person", 0.9, [300.0, 120.0, 500.0, 520.0]),
        detected(1, "dog", 0.6, [720.0, 300.0, 880.0, 420.0]),
        detected(2, "cat's toy", 0.5, [1180.0, 640.0, 1280.0, 720.0]),
    ]
}

/// A 640×640 image is the input itself: boxes are the script's, clamped to 640.
fn expected_640x640() -> Vec<Detected> {
    vec![
        detected(0, "person", 0.9, [150.0, 200.0, 250.0, 400.0]),
        detected(2, "cat's toy", 0.7, [480.0, 30.0, 520.0, 90.0]),
        detected(1, "dog", 0.6, [360.0, 290.0, 440.0, 350.0]),
        detected(2, "cat's toy", 0.5, [590.0, 460.0, 640.0, 500.0]),
    ]
}

#[track_caller]
fn assert_detections(found: &[Detected], expected: &[Detected]) {
    let close = |a: f32, b: f32| (a - b).abs() < 1e-4;
    let same = found.len() == expected.len()
        && found.iter().zip(expected).all(|(f, e)| {
            f.class == e.class
                && f.label == e.label
                && close(f.score, e.score)
                && close(f.bbox.x0, e.bbox.x0)
                && close(f.bbox.y0, e.bbox.y0)
                && close(f.bbox.x1, e.bbox.x1)
                && close(f.bbox.y1, e.bbox.y1)
        });
    assert!(same, "found {found:#?}\nexpected {expected:#?}");
}

#[test]
fn v8_decodes_letterboxes_back_and_suppresses() {
    let dir = fixture_models(&["v8"]);
    let mut detector = Detector::load(&options(dir.path(), "v8")).unwrap();
    assert_eq!(detector.layout(), Layout::V8);
    assert_eq!(detector.names(), ["person", "dog", "cat's toy"]);
    assert_eq!(detector.input_size(), (640, 640));
    assert!(!detector.dynamic_batch());
    assert_eq!(detector.max_batch(), 1);
    let pixels = image(1280, 720);
    let found = detector.detect(&[rgb(&pixels, 1280, 720)]).unwrap();
    assert_detections(&found[0], &expected_1280x720());
    let square = image(640, 640);
    let found = detector.detect(&[rgb(&square, 640, 640)]).unwrap();
    assert_detections(&found[0], &expected_640x640());
}

#[test]
fn cuda_asked_of_a_runtime_without_it_runs_on_the_cpu_and_says_why() {
    let dir = fixture_models(&["v8"]);
    let cpu = Detector::load(&options(dir.path(), "v8")).unwrap();
    assert_eq!((cpu.provider(), cpu.provider_note()), ("CPU", None));
    // PyPI's onnxruntime (what the tests use) has no CUDA provider; onnxruntime-gpu on a
    // machine with a driver would give "CUDA" here.
    let mut asked = options(dir.path(), "v8");
    asked.cuda = true;
    let mut detector = Detector::load(&asked).unwrap();
    assert_eq!(detector.provider(), "CPU");
    let note = detector.provider_note().expect("why not CUDA");
    assert!(
        note.starts_with("ONNX Runtime's CUDA execution provider cannot run here (")
            && note.ends_with("the model runs on the CPU"),
        "{note}"
    );
    let pixels = image(1280, 720);
    let found = detector.detect(&[rgb(&pixels, 1280, 720)]).unwrap();
    assert_detections(&found[0], &expected_1280x720());
}

#[test]
fn thresholds_come_from_the_options() {
    let dir = fixture_models(&["v8"]);
    let pixels = image(1280, 720);
    // A looser IoU keeps person B (IoU 0.905 with A); a lower conf keeps the 0.2 person.
    let mut loose = options(dir.path(), "v8");
    loose.iou = 0.95;
    loose.conf = 0.1;
    let mut detector = Detector::load(&loose).unwrap();
    let found = detector.detect(&[rgb(&pixels, 1280, 720)]).unwrap();
    let mut expected = expected_1280x720();
    expected.insert(1, detected(0, "person", 0.8, [310.0, 120.0, 510.0, 520.0]));
    expected.push(detected(0, "person", 0.2, [150.0, 670.0, 250.0, 720.0]));
    assert_detections(&found[0], &expected);

    let mut few = options(dir.path(), "v8");
    few.max_det = 2;
    let mut detector = Detector::load(&few).unwrap();
    let found = detector.detect(&[rgb(&pixels, 1280, 720)]).unwrap();
    assert_detections(&found[0], &expected_1280x720()[..2]);
}

#[test]
fn v5_scores_objectness_times_class() {
    let dir = fixture_models(&["v5"]);
    let mut detector = Detector::load(&options(dir.path(), "v5")).unwrap();
    assert_eq!(detector.layout(), Layout::V5);
    assert_eq!(detector.names(), ["person", "dog", "cat's toy"]);
    let pixels = image(1280, 720);
    let found = detector.detect(&[rgb(&pixels, 1280, 720)]).unwrap();
    assert_detections(&found[0], &expected_1280x720());
}

#[test]
fn end_to_end_rows_are_taken_as_they_are() {
    let dir = fixture_models(&["e2e"]);
    let mut detector = Detector::load(&options(dir.path(), "e2e")).unwrap();
    assert_eq!(detector.layout(), Layout::EndToEnd);
    let pixels = image(1280, 720);
    let found = detector.detect(&[rgb(&pixels, 1280, 720)]).unwrap();
    assert_detections(&found[0], &expected_1280x720());
}

#[test]
fn a_dynamic_batch_runs_up_to_max_batch_images_at_once() {
    let dir = fixture_models(&["v8_dynamic", "v8"]);
    let mut dynamic = options(dir.path(), "v8_dynamic");
    dynamic.max_batch = 2;
    let mut detector = Detector::load(&dynamic).unwrap();
    assert!(detector.dynamic_batch());
    assert_eq!(detector.max_batch(), 2);
    let (wide, square) = (image(1280, 720), image(640, 640));
    let images = [
        rgb(&wide, 1280, 720),
        rgb(&square, 640, 640),
        rgb(&wide, 1280, 720),
    ];
    let found = detector.detect(&images).unwrap();
    assert_eq!(detector.runs, 2, "three images in batches of at most two");
    assert_eq!(found.len(), 3);
    assert_detections(&found[0], &expected_1280x720());
    assert_detections(&found[1], &expected_640x640());
    assert_detections(&found[2], &expected_1280x720());

    // A fixed batch of 1 takes them one at a time, whatever max_batch says.
    let mut fixed = options(dir.path(), "v8");
    fixed.max_batch = 8;
    let mut detector = Detector::load(&fixed).unwrap();
    let found = detector.detect(&images).unwrap();
    assert_eq!(detector.runs, 3);
    assert_detections(&found[1], &expected_640x640());
    assert_detections(&found[2], &expected_1280x720());
    assert!(detector.detect(&[]).unwrap().is_empty());
}

#[test]
fn names_come_from_a_labels_file_or_are_numbered() {
    let dir = fixture_models(&["v8", "v8_no_names"]);
    let mut detector = Detector::load(&options(dir.path(), "v8_no_names")).unwrap();
    assert_eq!(detector.names(), ["class0", "class1"]);
    let pixels = image(1280, 720);
    let found = detector.detect(&[rgb(&pixels, 1280, 720)]).unwrap();
    let labels: Vec<&str> = found[0].iter().map(|d| d.label.as_str()).collect();
    assert_eq!(labels, ["class0", "class1"]);

    let labels_path = dir.path().join("labels.txt");
    std::fs::write(&labels_path, "human\nhound\ntoy\n").unwrap();
    let mut labelled = options(dir.path(), "v8");
    labelled.labels = Some(labels_path.clone());
    let detector = Detector::load(&labelled).unwrap();
    assert_eq!(detector.names(), ["human", "hound", "toy"]);

    // Labels that disagree with the model's classes are refused, naming both.
    std::fs::write(&labels_path, "human\nhound\n").unwrap();
    let error = Detector::load(&labelled).unwrap_err().to_string();
    assert!(
        error.contains("v8.onnx")
            && error.contains("[1, 7, 8400]")
            && error.contains("2 classes")
            && error.contains("labels.txt"),
        "{error}"
    );
    std::fs::write(&labels_path, "human\n\nhound\ntoy\n").unwrap();
    let error = Detector::load(&labelled).unwrap_err().to_string();
    assert!(error.contains("labels.txt line 2: empty name"), "{error}");
}

#[test]
fn a_forced_layout_must_fit_the_shape() {
    let dir = fixture_models(&["e2e"]);
    let mut forced = options(dir.path(), "e2e");
    forced.layout = Some(Layout::EndToEnd);
    assert_eq!(Detector::load(&forced).unwrap().layout(), Layout::EndToEnd);
    forced.layout = Some(Layout::V5);
    let error = Detector::load(&forced).unwrap_err().to_string();
    assert!(
        error.contains("e2e.onnx")
            && error.contains("output shape [1, 300, 6] is not the v5 [B, N, 8] layout asked for"),
        "{error}"
    );
}

#[test]
fn wrong_layouts_are_refused_at_load_naming_file_and_shape() {
    let dir = fixture_models(&["rank2", "input3d", "wrong_nc", "bad_names"]);
    let load = |model: &str| {
        Detector::load(&options(dir.path(), model))
            .unwrap_err()
            .to_string()
    };
    let cases = [
        ("rank2", "output shape [1, 10] has 2 dimensions"),
        (
            "input3d",
            "input images has shape [3, 640, 640]; a YOLO model takes [B, 3, H, W]",
        ),
        (
            "wrong_nc",
            "output shape [1, 7, 8400] fits no YOLO layout with the names' 5 classes",
        ),
        (
            "bad_names",
            "names metadata \"{0: 'person', 1: 'dog'\": at character 22",
        ),
    ];
    for (model, message) in cases {
        let error = load(model);
        assert!(
            error.contains(&format!("{model}.onnx")) && error.contains(message),
            "{model}: {error}"
        );
    }
}

#[test]
fn missing_or_corrupt_models_and_runtimes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = DetectorOptions::new(dir.path().join("missing.onnx"), test_env("ort"));
    let error = Detector::load(&missing).unwrap_err().to_string();
    assert!(error.contains("missing.onnx: cannot read it"), "{error}");

    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"this is not a protobuf").unwrap();
    let error = Detector::load(&DetectorOptions::new(&corrupt, test_env("ort")))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("corrupt.onnx: ONNX Runtime cannot load it"),
        "{error}"
    );

    let no_runtime = DetectorOptions::new(&corrupt, dir.path().join("libonnxruntime.so.9"));
    let error = Detector::load(&no_runtime).unwrap_err().to_string();
    assert!(
        error.starts_with("ONNX Runtime ")
            && error.contains("libonnxruntime.so.9: cannot open the library"),
        "{error}"
    );
    // A file that is no library: refused by the loader, or because this process already runs
    // the real one (the tests share a process); either way it is named.
    let not_a_library = DetectorOptions::new(&corrupt, &corrupt);
    let error = Detector::load(&not_a_library).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("ONNX Runtime {}", corrupt.display())),
        "{error}"
    );
}

#[test]
fn bad_images_and_options_are_refused() {
    let dir = fixture_models(&["v8"]);
    let mut detector = Detector::load(&options(dir.path(), "v8")).unwrap();
    let pixels = image(4, 4);
    let error = detector
        .detect(&[rgb(&pixels, 4, 4), rgb(&pixels, 5, 4)])
        .unwrap_err()
        .to_string();
    assert_eq!(error, "image 1: 5×4 RGB24 is 60 bytes, but 48 were given");
    let error = detector.detect(&[rgb(&[], 0, 4)]).unwrap_err().to_string();
    assert_eq!(error, "image 0: size 0×4 is empty");
    assert_eq!(detector.runs, 0, "nothing runs when an image is wrong");

    for (change, message) in [
        (
            (|o: &mut DetectorOptions| o.conf = 1.5) as fn(&mut DetectorOptions),
            "conf 1.5",
        ),
        (|o| o.iou = -0.1, "iou -0.1"),
        (|o| o.max_det = 0, "max_det"),
        (|o| o.max_batch = 0, "max_batch"),
    ] {
        let mut bad = options(dir.path(), "v8");
        change(&mut bad);
        let error = Detector::load(&bad).unwrap_err().to_string();
        assert!(
            error.starts_with("detector options: ") && error.contains(message),
            "{error}"
        );
    }
}
