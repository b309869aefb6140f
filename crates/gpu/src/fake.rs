//! The fake NVML file: a JSON description of GPUs that stands in for the driver in tests and on
//! GPU-less CI, so VRAM accounting can be exercised without a card. Its format is documented in
//! the crate docs (`lib.rs`); this module parses and checks it.

use std::collections::HashSet;
use std::path::Path;

use domain::{ByteSize, Device, DeviceId, DeviceKind, GpuProcess, GpuTelemetry};
use serde::Deserialize;

use crate::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FakeNvml {
    pub(crate) driver_version: Option<String>,
    #[serde(default)]
    pub(crate) gpus: Vec<FakeGpu>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FakeGpu {
    name: Option<String>,
    uuid: Option<String>,
    memory_total: ByteSize,
    memory_used: Option<ByteSize>,
    utilization_percent: Option<u32>,
    temperature_celsius: Option<u32>,
    power_draw_watts: Option<f64>,
    power_limit_watts: Option<f64>,
    pcie: Option<FakePcie>,
    #[serde(default)]
    processes: Vec<FakeProcess>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakePcie {
    generation: Option<u32>,
    width: Option<u32>,
    max_generation: Option<u32>,
    max_width: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeProcess {
    pid: u32,
    memory_used: Option<ByteSize>,
}

impl FakeNvml {
    /// Reads and checks the file; every failure names the file and what is wrong with it.
    pub(crate) fn read(path: &Path) -> Result<FakeNvml, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::FakeUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub(crate) fn parse(path: &Path, text: &str) -> Result<FakeNvml, Error> {
        let fake: FakeNvml = serde_json::from_str(text).map_err(|source| Error::FakeMalformed {
            path: path.to_path_buf(),
            source,
        })?;
        fake.check(path)?;
        Ok(fake)
    }

    /// Catches fakes that real NVML could never report, which would otherwise make a test
    /// about VRAM accounting pass or fail for the wrong reason.
    fn check(&self, path: &Path) -> Result<(), Error> {
        let invalid = |index: usize, problem: String| Error::FakeInvalid {
            path: path.to_path_buf(),
            index,
            problem,
        };
        let mut uuids = HashSet::new();
        for (index, gpu) in self.gpus.iter().enumerate() {
            if let Some(used) = gpu.memory_used {
                if used > gpu.memory_total {
                    return Err(invalid(
                        index,
                        format!(
                            "memory_used {used} is more than memory_total {}",
                            gpu.memory_total
                        ),
                    ));
                }
            }
            if let Some(percent) = gpu.utilization_percent {
                if percent > 100 {
                    return Err(invalid(
                        index,
                        format!("utilization_percent must be 0..=100, got {percent}"),
                    ));
                }
            }
            for (field, watts) in [
                ("power_draw_watts", gpu.power_draw_watts),
                ("power_limit_watts", gpu.power_limit_watts),
            ] {
                if let Some(watts) = watts {
                    if !watts.is_finite() || watts < 0.0 {
                        return Err(invalid(
                            index,
                            format!("{field} must be a non-negative number, got {watts}"),
                        ));
                    }
                }
            }
            let uuid = gpu.uuid(index);
            if !uuids.insert(uuid.clone()) {
                return Err(invalid(index, format!("uuid {uuid:?} is used twice")));
            }
        }
        Ok(())
    }

    /// The GPUs in file order; a GPU's position is its NVML index, as the driver would number it.
    pub(crate) fn devices(&self) -> Vec<Device> {
        self.gpus
            .iter()
            .enumerate()
            .map(|(position, gpu)| {
                let index = position as u32;
                Device {
                    id: DeviceId::gpu(index),
                    kind: DeviceKind::Gpu,
                    index,
                    name: gpu
                        .name
                        .clone()
                        .unwrap_or_else(|| "Fake NVML GPU".to_string()),
                    uuid: Some(gpu.uuid(position)),
                    memory_total: Some(gpu.memory_total),
                }
            })
            .collect()
    }

    /// The readings for `device`, looked up by index and checked by UUID so that a fake edited
    /// between calls behaves like a GPU that was swapped or fell off the bus.
    pub(crate) fn telemetry(&self, path: &Path, device: &Device) -> Result<GpuTelemetry, String> {
        let position = device.index as usize;
        let Some(gpu) = self.gpus.get(position) else {
            return Err(format!(
                "{}: gone from fake NVML file {} (it lists {} GPUs)",
                device.id,
                path.display(),
                self.gpus.len()
            ));
        };
        let uuid = gpu.uuid(position);
        if device.uuid.as_deref() != Some(uuid.as_str()) {
            return Err(format!(
                "{}: fake NVML file {} now has UUID {uuid} at index {}, was {}",
                device.id,
                path.display(),
                device.index,
                device.uuid.as_deref().unwrap_or("none")
            ));
        }
        let pcie = gpu.pcie.as_ref();
        Ok(GpuTelemetry {
            memory_used: gpu.memory_used,
            memory_total: Some(gpu.memory_total),
            utilization_percent: gpu.utilization_percent,
            temperature_celsius: gpu.temperature_celsius,
            power_draw_watts: gpu.power_draw_watts,
            power_limit_watts: gpu.power_limit_watts,
            pcie_generation: pcie.and_then(|p| p.generation),
            pcie_link_width: pcie.and_then(|p| p.width),
            pcie_max_generation: pcie.and_then(|p| p.max_generation),
            pcie_max_link_width: pcie.and_then(|p| p.max_width),
            processes: gpu
                .processes
                .iter()
                .map(|process| GpuProcess {
                    pid: process.pid,
                    memory_used: process.memory_used,
                })
                .collect(),
        })
    }
}

impl FakeGpu {
    /// A UUID is optional in the file so that small fakes stay small; the stand-in is stable
    /// per position and says it is a fake wherever it is shown.
    fn uuid(&self, position: usize) -> String {
        self.uuid
            .clone()
            .unwrap_or_else(|| format!("GPU-fake-{position}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"driver_version": "550.54", "gpus": [{"name": "NVIDIA GeForce RTX 3050",
        "uuid": "GPU-aaaa", "memory_total": "8GiB", "memory_used": "300MiB",
        "utilization_percent": 3, "temperature_celsius": 41, "power_draw_watts": 12.5,
        "power_limit_watts": 130.0,
        "pcie": {"generation": 4, "width": 8, "max_generation": 4, "max_width": 16},
        "processes": [{"pid": 123, "memory_used": "200MiB"}]}]}"#;

    fn parse(text: &str) -> Result<FakeNvml, Error> {
        FakeNvml::parse(Path::new("/fake/nvml.json"), text)
    }

    #[test]
    fn the_documented_example_parses_into_devices_and_telemetry() {
        let fake = parse(EXAMPLE).unwrap();
        assert_eq!(fake.driver_version.as_deref(), Some("550.54"));
        let devices = fake.devices();
        assert_eq!(
            devices,
            vec![Device {
                id: DeviceId::gpu(0),
                kind: DeviceKind::Gpu,
                index: 0,
                name: "NVIDIA GeForce RTX 3050".to_string(),
                uuid: Some("GPU-aaaa".to_string()),
                memory_total: Some(ByteSize::gib(8)),
            }]
        );
        let telemetry = fake
            .telemetry(Path::new("/fake/nvml.json"), &devices[0])
            .unwrap();
        assert_eq!(
            telemetry,
            GpuTelemetry {
                memory_used: Some(ByteSize::mib(300)),
                memory_total: Some(ByteSize::gib(8)),
                utilization_percent: Some(3),
                temperature_celsius: Some(41),
                power_draw_watts: Some(12.5),
                power_limit_watts: Some(130.0),
                pcie_generation: Some(4),
                pcie_link_width: Some(8),
                pcie_max_generation: Some(4),
                pcie_max_link_width: Some(16),
                processes: vec![GpuProcess {
                    pid: 123,
                    memory_used: Some(ByteSize::mib(200)),
                }],
            }
        );
    }

    #[test]
    fn a_minimal_gpu_needs_only_its_memory_and_sizes_may_be_numbers() {
        let fake =
            parse(r#"{"gpus": [{"memory_total": 1024}, {"memory_total": "2GiB"}]}"#).unwrap();
        let devices = fake.devices();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].memory_total, Some(ByteSize(1024)));
        assert_eq!(devices[1].id, DeviceId::gpu(1));
        assert_eq!(devices[1].uuid.as_deref(), Some("GPU-fake-1"));
        let telemetry = fake
            .telemetry(Path::new("/fake/nvml.json"), &devices[1])
            .unwrap();
        assert_eq!(telemetry.memory_used, None);
        assert_eq!(telemetry.pcie_generation, None);
        assert!(telemetry.processes.is_empty());
    }

    #[test]
    fn malformed_json_names_the_file_line_and_column() {
        let message = parse("{\"gpus\": [\n  {\"memory_total\": }]}")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("fake NVML file /fake/nvml.json: "),
            "{message}"
        );
        assert!(message.contains("line 2 column"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn a_bad_size_or_unknown_field_is_refused_with_the_reason() {
        let message = parse(r#"{"gpus": [{"memory_total": "eight gigs"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(message.contains("eight gigs"), "{message}");

        let message = parse(r#"{"gpus": [{"memory_total": "8GiB", "memory_usd": "1GiB"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(message.contains("memory_usd"), "{message}");

        let message = parse(r#"{"gpus": [{"name": "x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(message.contains("memory_total"), "{message}");
    }

    #[test]
    fn impossible_readings_are_refused_with_the_gpu_position() {
        let cases = [
            (
                r#"{"gpus": [{"memory_total": "1GiB", "memory_used": "2GiB"}]}"#,
                "gpus[0]: memory_used 2.0GiB is more than memory_total 1.0GiB",
            ),
            (
                r#"{"gpus": [{"memory_total": 1}, {"memory_total": 1, "utilization_percent": 101}]}"#,
                "gpus[1]: utilization_percent must be 0..=100, got 101",
            ),
            (
                r#"{"gpus": [{"memory_total": 1, "power_draw_watts": -3}]}"#,
                "gpus[0]: power_draw_watts must be a non-negative number, got -3",
            ),
            (
                r#"{"gpus": [{"memory_total": 1, "uuid": "GPU-x"}, {"memory_total": 1, "uuid": "GPU-x"}]}"#,
                "gpus[1]: uuid \"GPU-x\" is used twice",
            ),
        ];
        for (text, expected) in cases {
            let message = parse(text).unwrap_err().to_string();
            assert_eq!(
                message,
                format!("fake NVML file /fake/nvml.json: {expected}")
            );
        }
    }

    #[test]
    fn telemetry_for_a_gpu_that_left_or_changed_is_an_error() {
        let path = Path::new("/fake/nvml.json");
        let before =
            parse(r#"{"gpus": [{"memory_total": 1}, {"memory_total": 1, "uuid": "GPU-b"}]}"#)
                .unwrap();
        let devices = before.devices();

        let fewer = parse(r#"{"gpus": [{"memory_total": 1}]}"#).unwrap();
        assert!(fewer.telemetry(path, &devices[0]).is_ok());
        let gone = fewer.telemetry(path, &devices[1]).unwrap_err();
        assert_eq!(
            gone,
            "gpu1: gone from fake NVML file /fake/nvml.json (it lists 1 GPUs)"
        );

        let swapped =
            parse(r#"{"gpus": [{"memory_total": 1}, {"memory_total": 1, "uuid": "GPU-c"}]}"#)
                .unwrap();
        let changed = swapped.telemetry(path, &devices[1]).unwrap_err();
        assert!(
            changed.contains("now has UUID GPU-c at index 1, was GPU-b"),
            "{changed}"
        );
    }
}
