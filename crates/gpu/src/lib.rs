//! The only crate that talks to NVML: it finds the box's NVIDIA GPUs, reads their live telemetry
//! (memory, utilisation, temperature, power, PCIe link, processes) and decides which devices
//! Flowers places Runs on, CPU slots included.
//!
//! It never fails to start Flowers: a machine without a driver, without a GPU or with a broken
//! NVML gets [`GpuStatus::Unavailable`] with a one-line reason, and CPU slots stand in. It never
//! decides placement, never reads the environment (the binary turns `FLOWERS_FAKE_NVML` into
//! [`DetectOptions::fake_nvml`]) and never renders tables; it reports facts.
//!
//! # The fake NVML file
//!
//! Tests and GPU-less CI describe GPUs in a JSON file instead of asking NVML. It is re-read on
//! every [`Gpus::telemetry`] call, so a test can change readings (or remove a GPU) while Flowers
//! runs; the device list is fixed at [`Gpus::detect`], as it is with real NVML.
//!
//! ```json
//! {"driver_version": "550.54",
//!  "gpus": [{"name": "NVIDIA GeForce RTX 3050", "uuid": "GPU-5d2c…",
//!            "memory_total": "8GiB", "memory_used": "300MiB",
//!            "utilization_percent": 3, "temperature_celsius": 41,
//!            "power_draw_watts": 12.5, "power_limit_watts": 130.0,
//!            "pcie": {"generation": 4, "width": 8, "max_generation": 4, "max_width": 16},
//!            "processes": [{"pid": 123, "memory_used": "200MiB"}]}]}
//! ```
//!
//! - A GPU's position in `gpus` is its NVML index, so the first is `gpu0`.
//! - Only `memory_total` is required; every other field may be left out and then reads as
//!   unknown (`None`), like a reading a real card refuses. `name` defaults to
//!   `"Fake NVML GPU"`, `uuid` to `"GPU-fake-N"`.
//! - Sizes are byte counts or strings such as `"8GiB"`, `"300MiB"`, `"8GB"`.
//! - Unknown fields are refused, as are readings no card reports (`memory_used` above
//!   `memory_total`, `utilization_percent` above 100, negative watts, a UUID used twice).
//! - A file that cannot be read or parsed at detection makes the status
//!   [`GpuStatus::Unavailable`] with the file and, for JSON errors, the line and column; at a
//!   later telemetry call it makes every GPU's reading an error with that reason.
//! - When a GPU at some index is gone from the file or has a new UUID, its reading is an error,
//!   as when a real card falls off the bus.

mod fake;
mod nvml;

use std::fmt;
use std::path::PathBuf;

use domain::{Device, DeviceId, GpuTelemetry};
use serde::Serialize;

use crate::fake::FakeNvml;

/// How to find GPUs. The default asks NVML.
#[derive(Clone, Debug, Default)]
pub struct DetectOptions {
    /// Test fake: a JSON file describing GPUs instead of NVML (set by the binary from
    /// `FLOWERS_FAKE_NVML`; named a fake everywhere it shows). Re-read on every telemetry call
    /// so tests can change readings. The format is in the crate docs.
    pub fake_nvml: Option<PathBuf>,
}

/// Where the GPU facts come from, for `flowers gpus`, `flowers doctor` and the API.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GpuStatus {
    /// NVML started; the versions are `None` when the driver would not say.
    Nvml {
        driver_version: Option<String>,
        /// The newest CUDA the driver supports, as `"12.4"`.
        cuda_driver_version: Option<String>,
    },
    /// GPUs come from a fake NVML file (tests and GPU-less CI).
    Fake { path: PathBuf },
    /// No GPU can be used; `reason` is one line saying why (no driver, no GPU, bad fake file).
    Unavailable { reason: String },
}

impl fmt::Display for GpuStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuStatus::Nvml {
                driver_version,
                cuda_driver_version,
            } => {
                write!(
                    f,
                    "NVML, driver {}",
                    driver_version.as_deref().unwrap_or("unknown")
                )?;
                match cuda_driver_version {
                    Some(cuda) => write!(f, ", CUDA {cuda}"),
                    None => Ok(()),
                }
            }
            GpuStatus::Fake { path } => write!(f, "fake NVML from {}", path.display()),
            GpuStatus::Unavailable { reason } => write!(f, "no GPU: {reason}"),
        }
    }
}

/// Why GPU facts could not be read. [`Gpus`] turns these into one-line reasons; the variants
/// exist so callers and tests can tell a bad fake file from a missing driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fake NVML file {}: could not be read: {source}", path.display())]
    FakeUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// serde_json's message already ends with "at line L column C".
    #[error("fake NVML file {}: {source}", path.display())]
    FakeMalformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("fake NVML file {}: gpus[{index}]: {problem}", path.display())]
    FakeInvalid {
        path: PathBuf,
        index: usize,
        problem: String,
    },
}

/// Where readings come from once detection is done.
enum Source {
    Nvml(Box<nvml_wrapper::Nvml>),
    Fake(PathBuf),
    Nothing,
}

/// The GPUs found at start, and the way to read their telemetry. `Send + Sync`: one value is
/// shared by the API, the scheduler's snapshots and the metrics exporter.
pub struct Gpus {
    status: GpuStatus,
    devices: Vec<Device>,
    source: Source,
}

impl Gpus {
    /// Finds the GPUs. Never fails: every problem becomes [`GpuStatus::Unavailable`] with a
    /// one-line reason, e.g. "no NVIDIA driver: libnvidia-ml.so could not be loaded".
    pub fn detect(options: &DetectOptions) -> Gpus {
        let gpus = match &options.fake_nvml {
            Some(path) => Self::detect_fake(path.clone()),
            None => Self::detect_nvml(),
        };
        match &gpus.status {
            GpuStatus::Unavailable { reason } => tracing::info!("no GPU: {reason}"),
            status => tracing::info!(gpus = gpus.devices.len(), "GPUs found through {status}"),
        }
        gpus
    }

    fn detect_nvml() -> Gpus {
        match nvml::start(None) {
            Ok(session) => Gpus {
                status: session.status,
                devices: session.devices,
                source: Source::Nvml(Box::new(session.nvml)),
            },
            Err(reason) => Self::unavailable(reason),
        }
    }

    fn detect_fake(path: PathBuf) -> Gpus {
        match FakeNvml::read(&path) {
            Ok(fake) => {
                if let Some(driver) = &fake.driver_version {
                    tracing::info!("fake NVML file {} claims driver {driver}", path.display());
                }
                Gpus {
                    status: GpuStatus::Fake { path: path.clone() },
                    devices: fake.devices(),
                    source: Source::Fake(path),
                }
            }
            Err(error) => Self::unavailable(error.to_string()),
        }
    }

    fn unavailable(reason: String) -> Gpus {
        Gpus {
            status: GpuStatus::Unavailable {
                reason: nvml::one_line(&reason),
            },
            devices: Vec::new(),
            source: Source::Nothing,
        }
    }

    pub fn status(&self) -> &GpuStatus {
        &self.status
    }

    /// The GPUs found at detection, in NVML index order: id `gpuN`, kind Gpu, name, UUID and
    /// total memory. CPU slots are added by [`inventory`].
    pub fn devices(&self) -> Vec<Device> {
        self.devices.clone()
    }

    /// Live readings, one entry per detected GPU in [`Gpus::devices`] order. Blocking NVML calls
    /// (milliseconds each); async callers run it on a blocking thread. A field the card refuses
    /// is `None`; a GPU that is gone or unusable gives an `Err` with a one-line reason.
    pub fn telemetry(&self) -> Vec<(DeviceId, Result<GpuTelemetry, String>)> {
        match &self.source {
            Source::Nothing => Vec::new(),
            Source::Nvml(session) => self
                .devices
                .iter()
                .map(|device| (device.id.clone(), nvml::telemetry(session, device)))
                .collect(),
            Source::Fake(path) => {
                let fake = FakeNvml::read(path).map_err(|error| nvml::one_line(&error.to_string()));
                self.devices
                    .iter()
                    .map(|device| {
                        let reading = match &fake {
                            Ok(fake) => fake.telemetry(path, device),
                            Err(reason) => Err(format!("{}: {reason}", device.id)),
                        };
                        (device.id.clone(), reading)
                    })
                    .collect()
            }
        }
    }
}

/// The devices Flowers places Runs on: the GPUs, plus CPU slots: `cpu_slots` if the config says
/// so (`Some(n)`, even with GPUs present), else, when no GPU is found, one slot per two cores,
/// at least 2; none when GPUs exist and `cpu_slots` is `None`.
pub fn inventory(gpus: &[Device], cpu_slots: Option<u32>, cores: usize) -> Vec<Device> {
    let slots = match cpu_slots {
        Some(slots) => slots,
        None if gpus.is_empty() => u32::try_from(cores / 2).unwrap_or(u32::MAX).max(2),
        None => 0,
    };
    gpus.iter()
        .cloned()
        .chain((0..slots).map(Device::cpu_slot))
        .collect()
}

/// The cores this process may use (cgroup and affinity limits included), 1 when unknown.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|cores| cores.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use domain::{ByteSize, DeviceKind};

    use super::*;

    fn slots(devices: &[Device]) -> Vec<String> {
        devices
            .iter()
            .filter(|device| device.kind == DeviceKind::Cpu)
            .map(|device| device.id.to_string())
            .collect()
    }

    fn two_gpus() -> Vec<Device> {
        let fake = FakeNvml::parse(
            std::path::Path::new("test"),
            r#"{"gpus": [{"memory_total": "8GiB"}, {"memory_total": "8GiB"}]}"#,
        )
        .unwrap();
        fake.devices()
    }

    #[test]
    fn without_gpus_there_is_one_slot_per_two_cores_and_at_least_two() {
        for (cores, expected) in [(1, 2), (2, 2), (4, 2), (5, 2), (16, 8)] {
            let devices = inventory(&[], None, cores);
            assert_eq!(devices.len(), expected, "{cores} cores");
            assert!(devices.iter().all(|device| device.kind == DeviceKind::Cpu));
        }
        assert_eq!(slots(&inventory(&[], None, 6)), ["cpu0", "cpu1", "cpu2"]);
    }

    #[test]
    fn configured_cpu_slots_win_with_or_without_gpus() {
        assert_eq!(
            slots(&inventory(&[], Some(3), 16)),
            ["cpu0", "cpu1", "cpu2"]
        );
        let gpus = two_gpus();
        let devices = inventory(&gpus, Some(1), 16);
        assert_eq!(
            devices.iter().map(|d| d.id.to_string()).collect::<Vec<_>>(),
            ["gpu0", "gpu1", "cpu0"]
        );
        assert!(inventory(&[], Some(0), 16).is_empty());
    }

    #[test]
    fn gpus_alone_when_cpu_slots_are_not_configured() {
        let gpus = two_gpus();
        assert_eq!(inventory(&gpus, None, 16), gpus);
    }

    #[test]
    fn available_cores_is_at_least_one() {
        assert!(available_cores() >= 1);
    }

    #[test]
    fn detect_without_a_fake_never_panics_and_explains_itself_in_one_line() {
        let gpus = Gpus::detect(&DetectOptions::default());
        match gpus.status() {
            GpuStatus::Unavailable { reason } => {
                assert!(!reason.is_empty());
                assert!(!reason.contains('\n'), "{reason:?}");
                assert!(gpus.devices().is_empty());
                assert!(gpus.telemetry().is_empty());
            }
            // On a machine with a driver the same test checks the real path instead.
            GpuStatus::Nvml { .. } => {
                let devices = gpus.devices();
                assert!(!devices.is_empty());
                let telemetry = gpus.telemetry();
                assert_eq!(telemetry.len(), devices.len());
                for (id, reading) in telemetry {
                    let reading = reading.unwrap_or_else(|reason| panic!("{id}: {reason}"));
                    assert!(reading.memory_total.is_some(), "{id}");
                }
            }
            GpuStatus::Fake { .. } => panic!("no fake was given"),
        }
    }

    fn write(file: &tempfile::NamedTempFile, text: &str) {
        std::fs::write(file.path(), text).unwrap();
    }

    #[test]
    fn devices_and_telemetry_come_from_the_fake_and_follow_its_edits() {
        let file = tempfile::NamedTempFile::new().unwrap();
        write(
            &file,
            r#"{"gpus": [{"name": "NVIDIA GeForce RTX 3050", "uuid": "GPU-a", "memory_total": "8GiB", "memory_used": "300MiB"},
                         {"uuid": "GPU-b", "memory_total": "8GiB"}]}"#,
        );
        let gpus = Gpus::detect(&DetectOptions {
            fake_nvml: Some(file.path().to_path_buf()),
        });
        assert_eq!(
            gpus.status(),
            &GpuStatus::Fake {
                path: file.path().to_path_buf()
            }
        );
        let devices = gpus.devices();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].name, "NVIDIA GeForce RTX 3050");
        assert_eq!(devices[1].uuid.as_deref(), Some("GPU-b"));

        let telemetry = gpus.telemetry();
        assert_eq!(telemetry[0].0, DeviceId::gpu(0));
        let reading = telemetry[0].1.as_ref().unwrap();
        assert_eq!(reading.memory_used, Some(ByteSize::mib(300)));

        // A test raises memory use and pulls the second card.
        write(
            &file,
            r#"{"gpus": [{"uuid": "GPU-a", "memory_total": "8GiB", "memory_used": "7GiB"}]}"#,
        );
        let telemetry = gpus.telemetry();
        assert_eq!(
            telemetry[0].1.as_ref().unwrap().memory_used,
            Some(ByteSize::gib(7))
        );
        assert!(telemetry[1]
            .1
            .as_ref()
            .unwrap_err()
            .starts_with("gpu1: gone"));
        assert_eq!(gpus.devices().len(), 2, "devices are fixed at detection");

        // A broken edit fails every reading with the file's reason, and does not panic.
        write(&file, "{\"gpus\": [");
        for (id, reading) in gpus.telemetry() {
            let reason = reading.unwrap_err();
            assert!(
                reason.starts_with(&format!("{id}: fake NVML file ")),
                "{reason}"
            );
            assert!(!reason.contains('\n'));
        }
    }

    #[test]
    fn a_malformed_fake_is_unavailable_with_file_line_and_column() {
        let file = tempfile::NamedTempFile::new().unwrap();
        write(&file, "{\"gpus\": [\n  {\"memory_total\": \"8GiB\",}\n]}");
        let gpus = Gpus::detect(&DetectOptions {
            fake_nvml: Some(file.path().to_path_buf()),
        });
        let GpuStatus::Unavailable { reason } = gpus.status() else {
            panic!("{:?}", gpus.status());
        };
        let expected_start = format!("fake NVML file {}: ", file.path().display());
        assert!(reason.starts_with(&expected_start), "{reason}");
        assert!(reason.contains("line 2 column"), "{reason}");
        assert!(!reason.contains('\n'));
        assert!(gpus.devices().is_empty());
        assert!(gpus.telemetry().is_empty());
    }

    #[test]
    fn a_missing_fake_is_unavailable_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-fake.json");
        let gpus = Gpus::detect(&DetectOptions {
            fake_nvml: Some(path.clone()),
        });
        let GpuStatus::Unavailable { reason } = gpus.status() else {
            panic!("{:?}", gpus.status());
        };
        assert!(
            reason.starts_with(&format!(
                "fake NVML file {}: could not be read: ",
                path.display()
            )),
            "{reason}"
        );
        assert!(gpus.devices().is_empty());
    }

    #[test]
    fn status_serializes_with_a_kind_and_reads_as_one_line() {
        let status = GpuStatus::Nvml {
            driver_version: Some("550.54".into()),
            cuda_driver_version: Some("12.4".into()),
        };
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            serde_json::json!({"kind": "nvml", "driver_version": "550.54", "cuda_driver_version": "12.4"})
        );
        assert_eq!(status.to_string(), "NVML, driver 550.54, CUDA 12.4");
        let unavailable = GpuStatus::Unavailable {
            reason: "NVML found no GPU".into(),
        };
        assert_eq!(
            serde_json::to_value(&unavailable).unwrap(),
            serde_json::json!({"kind": "unavailable", "reason": "NVML found no GPU"})
        );
        assert_eq!(unavailable.to_string(), "no GPU: NVML found no GPU");
    }

    #[test]
    fn gpus_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Gpus>();
    }
}
