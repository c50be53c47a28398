//! Reading safetensors weights into candle without holding two copies.
//!
//! candle's `VarBuilder::from_mmaped_safetensors` is `unsafe` (forbidden in this workspace) and keeps the whole
//! memory map resident while it copies each tensor out of it, so peak memory reaches about twice the weights'
//! size. [`SafetensorsFiles`] instead parses the headers, checks every tensor's offsets against the file length
//! up front (a truncated or corrupt file is an [`EngineError::InvalidModel`], never a panic), and reads each
//! tensor with positioned reads when the model asks for it: only the tensor being built is held twice, for a
//! moment. Page-cache pages are not part of the process's resident set.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::EngineError;

/// Headers larger than this are refused (the format's own reference implementation uses 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

#[derive(Debug, Clone)]
struct TensorInfo {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// One or more safetensors files (the shards of one component), read tensor by tensor on demand.
pub struct SafetensorsFiles {
    files: Vec<(PathBuf, File)>,
    tensors: HashMap<String, TensorInfo>,
    overrides: HashMap<String, Tensor>,
    /// f32 deltas added to tensors as they are read (merged LoRAs, [`crate::lora`]).
    deltas: HashMap<String, Tensor>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidModel(format!("{}: {what}", path.display()))
}

fn parse_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U8" | "BOOL" => DType::U8,
        "U32" => DType::U32,
        _ => return None,
    })
}

impl SafetensorsFiles {
    /// Opens the files and validates their headers. Tensor names must be unique across the files.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self, EngineError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let path = path.as_ref();
            let mut file = File::open(path)
                .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
            let file_len = file
                .metadata()
                .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?
                .len();
            let mut len_bytes = [0u8; 8];
            file.read_exact(&mut len_bytes)
                .map_err(|_| invalid(path, "not a safetensors file (shorter than its header)"))?;
            let header_len = u64::from_le_bytes(len_bytes);
            if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
                return Err(invalid(path, "not a safetensors file (bad header length)"));
            }
            // Bounded by MAX_HEADER_BYTES above.
            let mut header = vec![0u8; header_len as usize];
            file.read_exact(&mut header)
                .map_err(|_| invalid(path, "truncated safetensors header"))?;
            let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
                .map_err(|e| invalid(path, format!("unreadable safetensors header: {e}")))?;
            let data_start = 8 + header_len;
            for (name, entry) in header {
                if name == "__metadata__" {
                    continue;
                }
                let info = parse_entry(&entry, index, data_start).ok_or_else(|| {
                    invalid(path, format!("bad header entry for tensor '{name}'"))
                })?;
                if info.end > file_len {
                    return Err(invalid(
                        path,
                        format!("truncated: tensor '{name}' ends past the end of the file"),
                    ));
                }
                if tensors.insert(name.clone(), info).is_some() {
                    return Err(invalid(path, format!("tensor '{name}' appears twice")));
                }
            }
            files.push((path.to_path_buf(), file));
        }
        Ok(Self {
            files,
            tensors,
            overrides: HashMap::new(),
            deltas: HashMap::new(),
        })
    }

    /// Whether a tensor of this name exists (in the files or as an override).
    pub fn contains(&self, name: &str) -> bool {
        self.overrides.contains_key(name) || self.tensors.contains_key(name)
    }

    /// The names of all tensors in the files.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The shape recorded in the header for `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|i| i.shape.as_slice())
    }

    /// The dtype recorded in the header for `name` (or the override's).
    pub fn dtype(&self, name: &str) -> Option<DType> {
        match self.overrides.get(name) {
            Some(t) => Some(t.dtype()),
            None => self.tensors.get(name).map(|i| i.dtype),
        }
    }

    /// Renames the tensors in the files: `rename` maps each name to its new name, or to `None` to drop the
    /// tensor. Two tensors renamed to the same name are an error.
    pub fn rename(
        &mut self,
        mut rename: impl FnMut(&str) -> Option<String>,
    ) -> Result<(), EngineError> {
        let mut renamed = HashMap::with_capacity(self.tensors.len());
        for (name, info) in std::mem::take(&mut self.tensors) {
            if let Some(new) = rename(&name) {
                if renamed.contains_key(&new) {
                    return Err(EngineError::InvalidModel(format!(
                        "two tensors map to '{new}' (one is '{name}')"
                    )));
                }
                renamed.insert(new, info);
            }
        }
        self.tensors = renamed;
        Ok(())
    }

    /// Splits tensor `name` along its first dimension into `parts.len()` equal tensors named `parts`, in order
    /// (a fused q/k/v projection read as three): the parts are views of the same bytes, nothing is read now.
    pub fn split_rows(&mut self, name: &str, parts: &[String]) -> Result<(), EngineError> {
        let info = self
            .tensors
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::InvalidModel(format!("missing tensor '{name}'")))?;
        let n = parts.len();
        let rows = info.shape.first().copied().unwrap_or(0);
        if n == 0 || rows == 0 || rows % n != 0 {
            return Err(EngineError::InvalidModel(format!(
                "tensor '{name}' has shape {:?}, which does not split in {n} along its first dimension",
                info.shape
            )));
        }
        self.tensors.remove(name);
        let chunk = (info.end - info.start) / n as u64;
        let mut shape = info.shape.clone();
        shape[0] = rows / n;
        for (i, part) in parts.iter().enumerate() {
            if self.tensors.contains_key(part) {
                return Err(EngineError::InvalidModel(format!(
                    "tensor '{part}' appears twice"
                )));
            }
            let start = info.start + chunk * i as u64;
            self.tensors.insert(
                part.clone(),
                TensorInfo {
                    shape: shape.clone(),
                    start,
                    end: start + chunk,
                    ..info.clone()
                },
            );
        }
        Ok(())
    }

    /// Replaces (or adds) a tensor: later reads of `name` return `tensor`.
    pub fn set_override(&mut self, name: &str, tensor: Tensor) {
        self.overrides.insert(name.to_string(), tensor);
    }

    /// Adds `delta` (f32, the tensor's shape) to `name` whenever it is read: the sum is computed in f32, then
    /// converted to the requested dtype. A second delta for the same name is added to the first.
    pub fn add_delta(&mut self, name: &str, delta: Tensor) -> Result<(), EngineError> {
        let delta = match self.deltas.remove(name) {
            Some(previous) => (&previous + &delta)?,
            None => delta,
        };
        self.deltas.insert(name.to_string(), delta);
        Ok(())
    }

    /// Reads one tensor, converted to `dtype` and moved to `device` (with its delta added, if it has one).
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor, EngineError> {
        if let Some(delta) = self.deltas.get(name) {
            let base = self.load_unpatched(name, DType::F32, &Device::Cpu)?;
            let delta = delta.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            if base.dims() != delta.dims() {
                return Err(EngineError::InvalidModel(format!(
                    "tensor '{name}' has shape {:?}, its LoRA delta {:?}",
                    base.dims(),
                    delta.dims()
                )));
            }
            return Ok((base + delta)?.to_dtype(dtype)?.to_device(device)?);
        }
        self.load_unpatched(name, dtype, device)
    }

    fn load_unpatched(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, EngineError> {
        if let Some(t) = self.overrides.get(name) {
            return Ok(t.to_dtype(dtype)?.to_device(device)?);
        }
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::InvalidModel(format!("missing tensor '{name}'")))?;
        let (path, file) = &self.files[info.file];
        let len = usize::try_from(info.end - info.start)
            .map_err(|_| invalid(path, format!("tensor '{name}' is too large")))?;
        let mut bytes = vec![0u8; len];
        let mut reader = file;
        reader
            .seek(SeekFrom::Start(info.start))
            .and_then(|_| reader.read_exact(&mut bytes))
            .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
        let tensor = Tensor::from_raw_buffer(&bytes, info.dtype, &info.shape, &Device::Cpu)?;
        drop(bytes);
        let tensor = if info.dtype == dtype {
            tensor
        } else {
            tensor.to_dtype(dtype)?
        };
        Ok(tensor.to_device(device)?)
    }

    /// A candle `VarBuilder` over these files.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

fn parse_entry(entry: &serde_json::Value, file: usize, data_start: u64) -> Option<TensorInfo> {
    let dtype = parse_dtype(entry.get("dtype")?.as_str()?)?;
    let shape = entry
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()?;
    let offsets = entry.get("data_offsets")?.as_array()?;
    let (begin, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    let expected = numel.checked_mul(dtype.size_in_bytes())? as u64;
    if end < begin || end - begin != expected {
        return None;
    }
    Some(TensorInfo {
        file,
        dtype,
        shape,
        start: data_start.checked_add(begin)?,
        end: data_start.checked_add(end)?,
    })
}

fn to_candle(e: EngineError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, dev).map_err(to_candle)?;
        if tensor.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "tensor '{name}' has shape {:?}, the model expects {:?}",
                tensor.dims(),
                s.dims()
            )));
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev).map_err(to_candle)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// How much memory a model's weights take once loaded with floating-point tensors in `dtype` (the VAE in
/// [`crate::pipeline::VAE_DTYPE`]): what it costs a model cache, which the file's size does not tell when the
/// file is stored in another precision. `path` is a single `.safetensors` file (every tensor counts) or a
/// diffusers folder (its `unet/`, `vae/`, `text_encoder/` and `text_encoder_2/` weights, as loading picks them).
pub fn loaded_bytes(path: &Path, dtype: DType) -> Result<u64, EngineError> {
    let bytes = |files: &SafetensorsFiles, dtype: DType| -> u64 {
        files
            .tensors
            .values()
            .map(|info| {
                let numel: u64 = info.shape.iter().map(|&d| d as u64).product();
                let size = if info.dtype.is_float() {
                    dtype
                } else {
                    info.dtype
                };
                numel.saturating_mul(size.size_in_bytes() as u64)
            })
            .sum()
    };
    if !path.is_dir() {
        return Ok(bytes(&SafetensorsFiles::open(&[path])?, dtype));
    }
    let mut total = 0u64;
    for (component, stem, component_dtype) in [
        ("unet", "diffusion_pytorch_model", dtype),
        ("vae", "diffusion_pytorch_model", crate::pipeline::VAE_DTYPE),
        ("text_encoder", "model", dtype),
        ("text_encoder_2", "model", dtype),
    ] {
        let dir = path.join(component);
        if dir.is_dir() {
            let files = SafetensorsFiles::open(&component_files(&dir, &[stem])?)?;
            total = total.saturating_add(bytes(&files, component_dtype));
        }
    }
    Ok(total)
}

/// The safetensors file(s) of a diffusers component folder: `<stem>.safetensors`, else its shards
/// (`<stem>-00001-of-0000N.safetensors`, listed by `<stem>.safetensors.index.json` or found by name).
pub fn component_files(dir: &Path, stems: &[&str]) -> Result<Vec<PathBuf>, EngineError> {
    for stem in stems {
        let single = dir.join(format!("{stem}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let prefix = format!("{stem}-");
        let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| EngineError::Io(format!("{}: {e}", dir.display())))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".safetensors"))
            })
            .collect();
        if !shards.is_empty() {
            shards.sort();
            return Ok(shards);
        }
    }
    if dir
        .join(format!("{}.bin", stems.first().copied().unwrap_or("model")))
        .is_file()
        || dir.join("pytorch_model.bin").is_file()
    {
        return Err(EngineError::InvalidModel(format!(
            "{}: only pickle (.bin) weights found; they are unsafe to load, convert them to safetensors",
            dir.display()
        )));
    }
    Err(EngineError::InvalidModel(format!(
        "{}: no safetensors weights ({} expected)",
        dir.display(),
        stems
            .iter()
            .map(|s| format!("{s}.safetensors"))
            .collect::<Vec<_>>()
            .join(" or ")
    )))
}

/// Writes float32 tensors to a safetensors file (used by the tiny-model generator and the benchmarks).
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), EngineError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| EngineError::InvalidArgument(format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize_to_file(views, None, path)
        .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))
}

/// Writes float32 tensors to a safetensors file one at a time: `fill` produces each tensor's values when it is
/// written, so memory stays at one tensor (used for the SD1.5-sized benchmark weights).
pub fn write_f32_safetensors_streaming(
    path: &Path,
    specs: &[(String, Vec<usize>)],
    mut fill: impl FnMut(&str, &[usize]) -> Vec<f32>,
) -> Result<(), EngineError> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in specs {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let io = |e: std::io::Error| EngineError::Io(format!("{}: {e}", path.display()));
    let mut out = std::io::BufWriter::new(File::create(path).map_err(io)?);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (name, shape) in specs {
        let values = fill(name, shape);
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(EngineError::LengthMismatch {
                what: "tensor values",
                expected: n,
                actual: values.len(),
            });
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(io)?;
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_bytes_counts_the_weights_in_the_load_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("sd1");
        crate::tiny::write_tiny_sd(&model, crate::tiny::Family::Sd1, 3).unwrap();
        let count = |component: &str| -> u64 {
            let files = SafetensorsFiles::open(
                &component_files(
                    &model.join(component),
                    &["diffusion_pytorch_model", "model"],
                )
                .unwrap(),
            )
            .unwrap();
            files
                .names()
                .map(|n| files.shape(n).unwrap().iter().product::<usize>() as u64)
                .sum()
        };
        let (unet, vae, text) = (count("unet"), count("vae"), count("text_encoder"));
        // The tiny writer stores f32: in f32 the size is 4 bytes per value; in f16 the UNet and the
        // text encoder halve while the VAE stays f32.
        assert_eq!(
            loaded_bytes(&model, DType::F32).unwrap(),
            4 * (unet + vae + text)
        );
        assert_eq!(
            loaded_bytes(&model, DType::F16).unwrap(),
            2 * (unet + text) + 4 * vae
        );
        // A single file: every tensor.
        let file = dir.path().join("one.safetensors");
        write_f32_safetensors(&file, &[("a".into(), vec![2, 3], vec![0.0; 6])]).unwrap();
        assert_eq!(loaded_bytes(&file, DType::F16).unwrap(), 12);
        assert!(loaded_bytes(&dir.path().join("missing.safetensors"), DType::F32).is_err());
    }

    #[test]
    fn round_trip_and_corruption_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        write_f32_safetensors(
            &path,
            &[(
                "a.weight".into(),
                vec![2, 3],
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            )],
        )
        .unwrap();
        let files = SafetensorsFiles::open(&[&path]).unwrap();
        let t = files.load("a.weight", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert!(matches!(
            files.load("nope", DType::F32, &Device::Cpu),
            Err(EngineError::InvalidModel(_))
        ));
        // Truncated data.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap();
        assert!(matches!(
            SafetensorsFiles::open(&[&cut]),
            Err(EngineError::InvalidModel(m)) if m.contains("truncated")
        ));
        // Garbage.
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fhello").unwrap();
        assert!(matches!(
            SafetensorsFiles::open(&[&junk]),
            Err(EngineError::InvalidModel(_))
        ));
        std::fs::write(&junk, b"abc").unwrap();
        assert!(matches!(
            SafetensorsFiles::open(&[&junk]),
            Err(EngineError::InvalidModel(_))
        ));
    }
}
