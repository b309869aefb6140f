use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ByteSize;

/// A device's stable short id: `gpu0`, `gpu1` for GPUs (by NVML index), `cpu0`, `cpu1` for CPU
/// slots. Run records, events and the CLI all use it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub String);

impl DeviceId {
    pub fn gpu(index: u32) -> Self {
        DeviceId(format!("gpu{index}"))
    }
    pub fn cpu(index: u32) -> Self {
        DeviceId(format!("cpu{index}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Gpu,
    /// A CPU slot standing in for a GPU; a whole-slot resource with no VRAM.
    Cpu,
}

/// What Flowers can place Runs on. Fixed facts only; what changes second to second is in
/// [`GpuTelemetry`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub kind: DeviceKind,
    /// NVML index for a GPU, slot number for a CPU slot.
    pub index: u32,
    pub name: String,
    /// NVML UUID (`GPU-…`); what `CUDA_VISIBLE_DEVICES` is set to. `None` for CPU slots.
    pub uuid: Option<String>,
    /// Total memory for a GPU; `None` for CPU slots, which are placed whole.
    pub memory_total: Option<ByteSize>,
}

impl Device {
    pub fn cpu_slot(index: u32) -> Self {
        Device {
            id: DeviceId::cpu(index),
            kind: DeviceKind::Cpu,
            index,
            name: "CPU slot".to_string(),
            uuid: None,
            memory_total: None,
        }
    }
}

/// A GPU's live readings from NVML. Every field NVML may refuse on a given card is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuTelemetry {
    pub memory_used: Option<ByteSize>,
    pub memory_total: Option<ByteSize>,
    /// Percent of time a kernel was running over the last sample period.
    pub utilization_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_draw_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub pcie_generation: Option<u32>,
    pub pcie_link_width: Option<u32>,
    pub pcie_max_generation: Option<u32>,
    pub pcie_max_link_width: Option<u32>,
    pub processes: Vec<GpuProcess>,
}

/// A process holding memory on a GPU, as NVML reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub memory_used: Option<ByteSize>,
}
