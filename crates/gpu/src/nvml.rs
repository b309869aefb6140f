//! The real path: NVML through `nvml-wrapper`, which loads `libnvidia-ml.so.1` at run time, so a
//! machine without the driver gets an error value here rather than a link failure at start.

use std::collections::BTreeMap;
use std::ffi::OsStr;

use domain::{ByteSize, Device, DeviceId, DeviceKind, GpuProcess, GpuTelemetry};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;
use nvml_wrapper::{cuda_driver_version_major, cuda_driver_version_minor, Nvml};

use crate::GpuStatus;

/// A started NVML session with the GPUs it found.
pub(crate) struct NvmlSession {
    pub(crate) nvml: Nvml,
    pub(crate) status: GpuStatus,
    pub(crate) devices: Vec<Device>,
}

/// Starts NVML from `lib_path` (the wrapper's default `libnvidia-ml.so.1` when `None`) and lists
/// the GPUs. The error is the one-line reason shown to the user.
pub(crate) fn start(lib_path: Option<&OsStr>) -> Result<NvmlSession, String> {
    let mut builder = Nvml::builder();
    if let Some(path) = lib_path {
        builder.lib_path(path);
    }
    let nvml = builder.init().map_err(|error| init_reason(&error))?;

    let driver_version = nvml.sys_driver_version().ok();
    let cuda_driver_version = nvml.sys_cuda_driver_version().ok().map(|version| {
        format!(
            "{}.{}",
            cuda_driver_version_major(version),
            cuda_driver_version_minor(version)
        )
    });
    let count = nvml
        .device_count()
        .map_err(|error| format!("NVML could not count the GPUs: {}", reason(&error)))?;
    if count == 0 {
        return Err("NVML found no GPU".to_string());
    }

    let mut devices = Vec::new();
    let mut first_failure = None;
    for index in 0..count {
        match describe(&nvml, index) {
            Ok(device) => devices.push(device),
            // One broken card should not hide the healthy ones; it is logged and left out, and
            // its id stays free because ids follow the NVML index.
            Err(failure) => {
                tracing::warn!(gpu = index, "left out: {failure}");
                first_failure.get_or_insert(failure);
            }
        }
    }
    if devices.is_empty() {
        return Err(first_failure.unwrap_or_else(|| "NVML found no GPU".to_string()));
    }
    Ok(NvmlSession {
        nvml,
        status: GpuStatus::Nvml {
            driver_version,
            cuda_driver_version,
        },
        devices,
    })
}

fn describe(nvml: &Nvml, index: u32) -> Result<Device, String> {
    let id = DeviceId::gpu(index);
    let gpu = nvml
        .device_by_index(index)
        .map_err(|error| format!("{id}: {}", reason(&error)))?;
    let name = gpu.name().unwrap_or_else(|_| "NVIDIA GPU".to_string());
    Ok(Device {
        id,
        kind: DeviceKind::Gpu,
        index,
        name,
        uuid: gpu.uuid().ok(),
        memory_total: gpu.memory_info().ok().map(|memory| ByteSize(memory.total)),
    })
}

/// Reads one GPU's live facts. Fields the card or driver refuses are left `None`; errors that
/// mean the GPU itself is gone or unusable fail the whole reading.
pub(crate) fn telemetry(nvml: &Nvml, device: &Device) -> Result<GpuTelemetry, String> {
    let id = &device.id;
    let fail = |error: NvmlError| format!("{id}: {}", reason(&error));
    let gpu = nvml.device_by_index(device.index).map_err(fail)?;
    // A GPU removed or reordered (after a reboot with a card pulled) must not be mistaken for
    // the one the scheduler placed Runs on.
    if let (Some(expected), Some(found)) = (&device.uuid, field(id, "uuid", gpu.uuid())?) {
        if *expected != found {
            return Err(format!(
                "{id}: NVML index {} now has UUID {found}, was {expected}",
                device.index
            ));
        }
    }

    let memory = field(id, "memory", gpu.memory_info())?;
    let utilization = field(id, "utilization", gpu.utilization_rates())?;
    let compute = field(id, "compute processes", gpu.running_compute_processes())?;
    let graphics = field(id, "graphics processes", gpu.running_graphics_processes())?;
    Ok(GpuTelemetry {
        // NVML's `used` leaves out memory the driver reserves; total minus free counts it,
        // because reserved memory is no more available to a Run than memory in use.
        memory_used: memory
            .as_ref()
            .map(|memory| ByteSize(memory.total.saturating_sub(memory.free))),
        memory_total: memory.as_ref().map(|memory| ByteSize(memory.total)),
        utilization_percent: utilization.map(|rates| rates.gpu),
        temperature_celsius: field(id, "temperature", gpu.temperature(TemperatureSensor::Gpu))?,
        power_draw_watts: field(id, "power usage", gpu.power_usage())?.map(milliwatts_to_watts),
        power_limit_watts: field(id, "power limit", gpu.enforced_power_limit())?
            .map(milliwatts_to_watts),
        pcie_generation: field(id, "PCIe generation", gpu.current_pcie_link_gen())?,
        pcie_link_width: field(id, "PCIe width", gpu.current_pcie_link_width())?,
        pcie_max_generation: field(id, "PCIe max generation", gpu.max_pcie_link_gen())?,
        pcie_max_link_width: field(id, "PCIe max width", gpu.max_pcie_link_width())?,
        processes: merge_processes(compute.unwrap_or_default(), graphics.unwrap_or_default()),
    })
}

/// Sorts a per-field NVML error into "this reading is missing" (`Ok(None)`) or "the GPU is not
/// usable" (`Err`). Only the second kind is worth failing a whole telemetry sample for.
fn field<T>(id: &DeviceId, what: &str, result: Result<T, NvmlError>) -> Result<Option<T>, String> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(
            error @ (NvmlError::GpuLost
            | NvmlError::ResetRequired
            | NvmlError::DriverNotLoaded
            | NvmlError::Uninitialized
            | NvmlError::LibRmVersionMismatch),
        ) => Err(format!("{id}: {}", reason(&error))),
        Err(error) => {
            // Debug, not warn: consumer cards refuse some fields on every sample.
            tracing::debug!(gpu = %id, "NVML gave no {what}: {error}");
            Ok(None)
        }
    }
}

fn milliwatts_to_watts(milliwatts: u32) -> f64 {
    f64::from(milliwatts) / 1000.0
}

/// One entry per pid: a process that both computes and draws appears in both NVML lists.
fn merge_processes(compute: Vec<ProcessInfo>, graphics: Vec<ProcessInfo>) -> Vec<GpuProcess> {
    let mut by_pid: BTreeMap<u32, Option<ByteSize>> = BTreeMap::new();
    for process in compute.into_iter().chain(graphics) {
        let used = match process.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(ByteSize(bytes)),
            UsedGpuMemory::Unavailable => None,
        };
        let entry = by_pid.entry(process.pid).or_insert(None);
        *entry = (*entry).max(used);
    }
    by_pid
        .into_iter()
        .map(|(pid, memory_used)| GpuProcess { pid, memory_used })
        .collect()
}

/// The user-facing reason NVML could not start: what is wrong with the machine, then NVML's
/// own name for it so it can be searched for.
pub(crate) fn init_reason(error: &NvmlError) -> String {
    let text = match error {
        NvmlError::LibloadingError(detail) => {
            tracing::debug!("loading libnvidia-ml.so failed: {detail}");
            "no NVIDIA driver: libnvidia-ml.so could not be loaded".to_string()
        }
        // The detail is libloading's "<library>: undefined symbol: <name>".
        NvmlError::FailedToLoadSymbol(detail) => format!("NVIDIA driver too old: {detail}"),
        _ => reason(error),
    };
    one_line(&text)
}

/// A one-line explanation of an NVML error that names the variant, as NVIDIA's docs do.
pub(crate) fn reason(error: &NvmlError) -> String {
    let text = match error {
        NvmlError::DriverNotLoaded => {
            "NVIDIA driver not loaded (NVML: DriverNotLoaded)".to_string()
        }
        NvmlError::NoPermission => {
            "no permission to talk to the NVIDIA driver (NVML: NoPermission)".to_string()
        }
        NvmlError::LibRmVersionMismatch => {
            "NVIDIA driver and library versions differ; reboot after a driver upgrade \
             (NVML: LibRmVersionMismatch)"
                .to_string()
        }
        NvmlError::GpuLost => "GPU fell off the bus or is inaccessible (NVML: GpuLost)".to_string(),
        NvmlError::ResetRequired => "GPU needs a reset (NVML: ResetRequired)".to_string(),
        NvmlError::InsufficientPower => {
            "GPU power cables are not properly attached (NVML: InsufficientPower)".to_string()
        }
        NvmlError::IrqIssue => {
            "NVIDIA kernel module reports an interrupt problem (NVML: IrqIssue)".to_string()
        }
        NvmlError::OperatingSystem => {
            "GPU access blocked by the operating system or cgroups (NVML: OperatingSystem)"
                .to_string()
        }
        NvmlError::LibloadingError(detail) => {
            format!("libnvidia-ml.so could not be loaded: {detail}")
        }
        NvmlError::FailedToLoadSymbol(detail) => format!("NVML function missing: {detail}"),
        other => format!("NVML error: {other}"),
    };
    one_line(&text)
}

/// Reasons end up in tables, events and log lines, where a newline would break the layout.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_one_line_reason() {
        let failure = start(Some(OsStr::new("/nonexistent/flowers/libnvidia-ml.so.1")))
            .err()
            .expect("a library that does not exist cannot start NVML");
        assert_eq!(
            failure,
            "no NVIDIA driver: libnvidia-ml.so could not be loaded"
        );
    }

    #[test]
    fn a_library_that_is_not_nvml_says_which_symbol_is_missing() {
        // libc loads fine but has no NVML symbols: the "driver too old" path, without a driver.
        let failure = start(Some(OsStr::new("libc.so.6")))
            .err()
            .expect("libc is not NVML");
        assert!(failure.starts_with("NVIDIA driver too old: "), "{failure}");
        assert!(failure.contains("nvmlInit_v2"), "{failure}");
        assert!(!failure.contains('\n'));
    }

    #[test]
    fn driver_errors_name_the_problem_and_the_nvml_variant() {
        assert_eq!(
            init_reason(&NvmlError::DriverNotLoaded),
            "NVIDIA driver not loaded (NVML: DriverNotLoaded)"
        );
        assert_eq!(
            init_reason(&NvmlError::NoPermission),
            "no permission to talk to the NVIDIA driver (NVML: NoPermission)"
        );
        assert!(init_reason(&NvmlError::LibRmVersionMismatch).contains("reboot"));
        assert_eq!(
            init_reason(&NvmlError::Unknown),
            "NVML error: an internal driver error occurred"
        );
        assert_eq!(
            init_reason(&NvmlError::FailedToLoadSymbol(
                "libnvidia-ml.so.1: undefined symbol: nvmlInit_v2".into()
            )),
            "NVIDIA driver too old: libnvidia-ml.so.1: undefined symbol: nvmlInit_v2"
        );
    }

    #[test]
    fn missing_fields_are_none_but_a_lost_gpu_fails_the_sample() {
        let id = DeviceId::gpu(0);
        assert_eq!(
            field::<u32>(&id, "x", Err(NvmlError::NotSupported)),
            Ok(None)
        );
        assert_eq!(
            field::<u32>(&id, "x", Err(NvmlError::NoPermission)),
            Ok(None)
        );
        assert_eq!(field(&id, "x", Ok(7u32)), Ok(Some(7)));
        assert_eq!(
            field::<u32>(&id, "x", Err(NvmlError::GpuLost)),
            Err("gpu0: GPU fell off the bus or is inaccessible (NVML: GpuLost)".to_string())
        );
    }

    #[test]
    fn processes_in_both_lists_appear_once_with_their_memory() {
        let process = |pid, used| ProcessInfo {
            pid,
            used_gpu_memory: used,
            gpu_instance_id: None,
            compute_instance_id: None,
        };
        let merged = merge_processes(
            vec![
                process(7, UsedGpuMemory::Used(100)),
                process(3, UsedGpuMemory::Unavailable),
            ],
            vec![
                process(7, UsedGpuMemory::Used(100)),
                process(9, UsedGpuMemory::Used(5)),
            ],
        );
        assert_eq!(
            merged,
            vec![
                GpuProcess {
                    pid: 3,
                    memory_used: None
                },
                GpuProcess {
                    pid: 7,
                    memory_used: Some(ByteSize(100))
                },
                GpuProcess {
                    pid: 9,
                    memory_used: Some(ByteSize(5))
                },
            ]
        );
        assert_eq!(milliwatts_to_watts(12_500), 12.5);
    }
}
