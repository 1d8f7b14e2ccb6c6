//! Reading a single-file checkpoint's tensors with plain file reads, one tensor at a time,
//! rather than through its memory map.
//!
//! Why: the pages of a mapped file count in the process's resident memory for as long as the
//! file is mapped. Loading a model through the map holds, at the end of the load, every page of
//! the checkpoint beside the converted weights: SDXL's 6.9 GB in bf16 peaked at 13.7 GB
//! (BENCHMARKS.md, issue 31). A plain read leaves the file's pages in the page cache, which is
//! not the process's, so the load peaks at about the weights. The tensors are the same bytes
//! converted the same way (`Tensor::from_raw_buffer`, then `to_dtype`).
//!
//! The index (`checkpoint`) still names and shapes the tensors and reads anything this does not:
//! a diffusers folder (renamed, fused and transposed tensors), a dtype other than f32, f16 and
//! bf16, a header this cannot parse, and every tensor for a model on another device than the
//! CPU.

use crate::checkpoint::TensorIndex;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where a tensor is stored in the file.
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// The byte range, from the start of the data (after the header).
    range: (u64, u64),
}

/// A single `.safetensors` file, its header read.
pub(crate) struct Unmapped {
    file: File,
    path: PathBuf,
    data_start: u64,
    entries: HashMap<String, Entry>,
}

impl Unmapped {
    /// The file at `path`; `None` for a folder or a file whose header is not safetensors'.
    pub(crate) fn open(path: &Path) -> Option<Unmapped> {
        if path.is_dir() {
            return None;
        }
        let file = File::open(path).ok()?;
        let mut length = [0u8; 8];
        file.read_exact_at(&mut length, 0).ok()?;
        let length = u64::from_le_bytes(length);
        let mut header = vec![0u8; usize::try_from(length).ok()?];
        file.read_exact_at(&mut header, 8).ok()?;
        let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
        let entries = header
            .iter()
            .filter_map(|(name, entry)| Some((name.clone(), entry_of(entry)?)))
            .collect();
        Some(Unmapped {
            file,
            path: path.into(),
            data_start: 8 + length,
            entries,
        })
    }

    /// Tensor `name` as stored, on the CPU; `None` if this file has no plain entry of that name.
    pub(crate) fn read(&self, name: &str) -> Option<std::io::Result<Tensor>> {
        let entry = self.entries.get(name)?;
        let (start, end) = entry.range;
        let read = || {
            let mut bytes = vec![0u8; usize::try_from(end - start).map_err(std::io::Error::other)?];
            self.file
                .read_exact_at(&mut bytes, self.data_start + start)?;
            Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, &Device::Cpu)
                .map_err(std::io::Error::other)
        };
        Some(read())
    }

    /// The stored shape of `name`, if it has a plain entry.
    pub(crate) fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }
}

/// A header entry of a dtype this reads, whose byte range fits its shape.
fn entry_of(entry: &serde_json::Value) -> Option<Entry> {
    let dtype = match entry.get("dtype")?.as_str()? {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        _ => return None,
    };
    let numbers = |key: &str| -> Option<Vec<u64>> {
        let values = entry.get(key)?.as_array()?;
        values.iter().map(serde_json::Value::as_u64).collect()
    };
    let offsets = numbers("data_offsets")?;
    let shape: Vec<usize> = numbers("shape")?
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes = (shape.iter().product::<usize>() * dtype.size_in_bytes()) as u64;
    match offsets.as_slice() {
        &[start, end] if end >= start && end - start == bytes => Some(Entry {
            dtype,
            shape,
            range: (start, end),
        }),
        _ => None,
    }
}

/// A `VarBuilder` over `index` reading as `dtype` on `device`: a single file on the CPU with
/// plain reads, anything else through the index.
pub(crate) fn var_builder(
    index: &TensorIndex,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    match Unmapped::open(index.path()).filter(|_| device.is_cpu()) {
        Some(file) => {
            let backend = Reads {
                file,
                index: index.clone(),
            };
            VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
        }
        None => index.var_builder(dtype, device),
    }
}

/// Plain reads where the file has a plain entry, the index elsewhere.
struct Reads {
    file: Unmapped,
    index: TensorIndex,
}

impl Reads {
    fn read(&self, name: &str) -> Option<candle_core::Result<Tensor>> {
        let read = self.file.read(name)?;
        Some(read.map_err(|e| {
            candle_core::Error::Msg(format!(
                "{}: cannot read `{name}`: {e}",
                self.file.path.display()
            ))
        }))
    }
}

impl SimpleBackend for Reads {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(read) = self.read(name) else {
            return self.index.get(shape, name, init, dtype, device);
        };
        let mut tensor = read?;
        // As the index does: some 1×1 convolutions are stored as linear weights.
        if tensor.shape() != &shape && same_but_trailing_ones(tensor.dims(), shape.dims()) {
            tensor = tensor.reshape(shape.dims())?;
        }
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor `{name}` has shape {:?}, the model expects {:?}",
                self.file.path.display(),
                tensor.dims(),
                shape.dims()
            )));
        }
        tensor.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.read(name) {
            Some(read) => read?.to_dtype(dtype),
            None => self.index.get_unchecked(name, dtype, device),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains(name)
    }
}

/// Equal once trailing dimensions of 1 are dropped.
fn same_but_trailing_ones(a: &[usize], b: &[usize]) -> bool {
    let trim = |d: &[usize]| -> usize { d.iter().rposition(|&x| x != 1).map_or(0, |i| i + 1) };
    a[..trim(a)] == b[..trim(b)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny::{write_tiny_checkpoint, TinyArch};

    fn values(t: &Tensor) -> Vec<f32> {
        let t = t.to_dtype(DType::F32).unwrap();
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Every tensor of a tiny SDXL checkpoint (its three networks), read plainly, is the one
    /// the index reads through the map, bit for bit, as f32 and as bf16.
    #[test]
    fn plain_reads_give_the_tensors_the_map_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdxl.safetensors");
        write_tiny_checkpoint(TinyArch::Sdxl, &path, 5).unwrap();
        let index = crate::checkpoint::open(&path).unwrap();
        let file = Unmapped::open(&path).expect("a single file");
        assert!(index.names().all(|name| file.shape(name).is_some()));
        for dtype in [DType::F32, DType::BF16] {
            let plain = var_builder(&index, dtype, &Device::Cpu);
            let mapped = index.var_builder(dtype, &Device::Cpu);
            for name in index.names() {
                let shape = index.shape(name).unwrap();
                let ours = plain.get(shape.as_slice(), name).unwrap();
                let theirs = mapped.get(shape.as_slice(), name).unwrap();
                assert_eq!(ours.dtype(), dtype, "{name}");
                assert_eq!(values(&ours), values(&theirs), "{name} as {dtype:?}");
            }
        }
        assert!(index.len() > 100, "{} tensors", index.len());
    }
}
