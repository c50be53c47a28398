//! Where generation runs: the `device` and `precision` config keys, resolved as InvokeAI's
//! `TorchDevice` does (`invokeai/backend/util/devices.py`).
//!
//! - `device: auto` takes the first CUDA GPU when this build has the `cuda` feature and a GPU is
//!   there, else the CPU. `cpu` is the CPU; `cuda` / `cuda:N` is that GPU, and an error when the
//!   build has no CUDA support or the GPU is missing. `mps` and `xpu` are valid config values
//!   (InvokeAI's) that no Atelier build can serve.
//! - `precision` applies on a GPU only: `auto` and `float16` run in float16, `bfloat16` and
//!   `float32` as named. On the CPU everything runs in float32, whatever `precision` says.
//! - The VAE runs in float32 everywhere (`atelier_engine::pipeline::VAE_DTYPE`).
//!
//! A device that cannot be used does not stop the server (boards, images and the queue still
//! work): it is logged at start-up and every generation that needs a model fails with the reason.

use atelier_engine::candle::{DType, Device};

/// The resolved device and weight dtype for generation models.
#[derive(Debug, Clone)]
pub struct Compute {
    pub device: Device,
    pub dtype: DType,
}

impl Compute {
    /// The CPU in float32: the default of every build without a GPU.
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }

    /// How the device is named in logs: `cpu` or `cuda:N`.
    pub fn describe(&self) -> String {
        let name = match &self.device {
            Device::Cpu => "cpu".to_owned(),
            Device::Cuda(_) => match self.device.location() {
                atelier_engine::candle::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                _ => "cuda".to_owned(),
            },
            Device::Metal(_) => "metal".to_owned(),
        };
        format!("{name} ({})", dtype_name(self.dtype))
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Resolves the `device` and `precision` config values (already validated by the config loader).
pub fn resolve(device: &str, precision: &str) -> Result<Compute, String> {
    resolve_with(device, precision, &|ordinal| {
        Device::new_cuda(ordinal).map_err(|e| e.to_string())
    })
}

/// [`resolve`] with the CUDA constructor given, so the rules are testable on machines without a GPU.
fn resolve_with(
    device: &str,
    precision: &str,
    cuda: &dyn Fn(usize) -> Result<Device, String>,
) -> Result<Compute, String> {
    let device = match device {
        "auto" => {
            if cfg!(feature = "cuda") {
                cuda(0).unwrap_or(Device::Cpu)
            } else {
                Device::Cpu
            }
        }
        "cpu" => Device::Cpu,
        "cuda" => cuda_device(device, 0, cuda)?,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda_device(other, ordinal, cuda)?,
            _ => {
                return Err(format!(
                    "device '{other}' is not supported by Atelier: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
                ))
            }
        },
    };
    let dtype = dtype_for(!device.is_cpu(), precision);
    Ok(Compute { device, dtype })
}

/// The weights' dtype: `precision` on a GPU (`auto` is float16), float32 on the CPU.
fn dtype_for(gpu: bool, precision: &str) -> DType {
    match precision {
        _ if !gpu => DType::F32,
        "float32" => DType::F32,
        "bfloat16" => DType::BF16,
        _ => DType::F16,
    }
}

fn cuda_device(
    name: &str,
    ordinal: usize,
    cuda: &dyn Fn(usize) -> Result<Device, String>,
) -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err(format!(
            "device '{name}' is configured, but this build of Atelier has no CUDA support \
             (build it with `--features cuda`, or set device: auto or cpu)"
        ));
    }
    cuda(ordinal).map_err(|e| format!("device '{name}' is not available: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for a GPU: the rules only look at whether the device is the CPU.
    fn no_gpu(_: usize) -> Result<Device, String> {
        Err("no CUDA-capable device is detected".into())
    }

    #[test]
    fn the_cpu_runs_float32_whatever_the_precision() {
        for device in ["auto", "cpu"] {
            for precision in ["auto", "float16", "bfloat16", "float32"] {
                let c = resolve_with(device, precision, &no_gpu).unwrap();
                assert!(c.device.is_cpu(), "{device} {precision}");
                assert_eq!(c.dtype, DType::F32, "{device} {precision}");
            }
        }
        assert_eq!(
            resolve("cpu", "float16").unwrap().describe(),
            "cpu (float32)"
        );
    }

    #[test]
    fn a_gpu_runs_the_configured_precision() {
        assert_eq!(dtype_for(true, "auto"), DType::F16);
        assert_eq!(dtype_for(true, "float16"), DType::F16);
        assert_eq!(dtype_for(true, "bfloat16"), DType::BF16);
        assert_eq!(dtype_for(true, "float32"), DType::F32);
        assert_eq!(dtype_for(false, "float16"), DType::F32);
    }

    #[test]
    fn an_unusable_device_is_a_clear_error() {
        for device in ["cuda", "cuda:1"] {
            let err = resolve_with(device, "auto", &no_gpu).unwrap_err();
            assert!(err.starts_with(&format!("device '{device}' ")), "{err}");
            if cfg!(feature = "cuda") {
                assert!(err.ends_with("no CUDA-capable device is detected"), "{err}");
            } else {
                assert!(err.contains("has no CUDA support"), "{err}");
            }
        }
        for device in ["mps", "xpu", "xpu:0"] {
            assert_eq!(
                resolve_with(device, "auto", &no_gpu).unwrap_err(),
                format!("device '{device}' is not supported by Atelier: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
            );
        }
    }

    #[test]
    fn auto_falls_back_to_the_cpu_without_a_gpu() {
        let c = resolve_with("auto", "float16", &no_gpu).unwrap();
        assert!(c.device.is_cpu());
        // The real constructor, on this build and machine.
        let real = resolve("auto", "auto").unwrap();
        if !cfg!(feature = "cuda") {
            assert!(real.device.is_cpu());
        }
    }
}
