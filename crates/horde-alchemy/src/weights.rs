//! A safetensors checkpoint read tensor by tensor into float32.
//!
//! candle's `safetensors::load` reads the whole file into one buffer and then copies every
//! tensor out of it, so while a model loads its weights are resident twice (3.6 GB for BLIP
//! large, whose f32 weights are 1.8 GB; BENCHMARKS.md, "Alchemy"). Here the header is parsed
//! alone and each tensor's bytes are read from the file at its offset straight into a buffer
//! the tensor is made from: at most one tensor's bytes exist twice, and nothing of the file is
//! mapped, so no `unsafe` is needed. The header is checked as the safetensors crate checks it
//! (known dtypes, offsets in order, inside the file, the size the shape needs), and every error
//! names the tensor at fault.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

/// The largest header the safetensors crate accepts (`MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Stores every linear layer's weight that `wanted` names (a 2-D `….weight` that is not an
/// embedding) transposed in memory, its shape and values unchanged: `t().contiguous().t()`.
///
/// A linear layer computes `x · Wᵀ`. With `W` stored row by row, `gemm` (which turns the
/// product into `W · xᵀ`, its microkernel wanting column-major operands) must transpose `W`
/// while packing it, on every call; stored transposed, `W` is read as it lies. Measured on the
/// 2-core AMD EPYC with `gemm`'s AVX-512 kernels (the worker's), CLIP ViT-L/14's products at 257
/// tokens take 0.5–0.8× the time (1024→1024: 4.8 → 2.5 ms; 4096→1024: 18.6 → 10.3 ms), and the
/// packing was a third of the interrogation (BENCHMARKS.md, "Alchemy"). Only for products of
/// many rows: one token at a time (BLIP's decoder) a weight row by row is faster (its caption
/// took 1.6× the time with every weight transposed). Embeddings stay as they are: they are
/// read by row (`index_select`).
pub fn transpose_product_weights(
    tensors: &mut HashMap<String, Tensor>,
    wanted: impl Fn(&str) -> bool,
) -> candle_core::Result<()> {
    let names: Vec<String> = tensors
        .iter()
        .filter(|(name, t)| {
            t.rank() == 2 && name.ends_with(".weight") && !name.contains("embed") && wanted(name)
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in names {
        let weight = tensors.remove(&name).expect("listed just above");
        let stored = stored_transposed(&weight)?;
        drop(weight);
        tensors.insert(name, stored);
    }
    Ok(())
}

/// `weight` (a matrix) with the same shape and values, stored column by column.
pub(crate) fn stored_transposed(weight: &Tensor) -> candle_core::Result<Tensor> {
    weight.t()?.contiguous()?.t()
}

/// One entry of a safetensors header.
#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Every tensor of the safetensors file at `path`, converted to float32 on `device`. An error
/// says what is wrong (and in which tensor); the caller's error names the file.
pub fn load_f32(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let (data_start, entries) = read_header(&file, file_len)?;
    let mut tensors = HashMap::with_capacity(entries.len());
    for (name, entry) in entries {
        let tensor = read_tensor(&file, data_start, &entry, device)
            .map_err(|message| format!("tensor `{name}`: {message}"))?;
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// The offset the data starts at, and the header's entries (its `__metadata__` left out),
/// each checked against the file's length.
fn read_header(file: &File, file_len: u64) -> Result<(u64, Vec<(String, Entry)>), String> {
    let mut length = [0u8; 8];
    file.read_exact_at(&mut length, 0)
        .map_err(|e| format!("not a safetensors file (no header length): {e}"))?;
    let header_len = u64::from_le_bytes(length);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
        return Err(format!(
            "a header of {header_len} bytes in a file of {file_len}"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| format!("reading the header: {e}"))?;
    let mut raw: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("the header: {e}"))?;
    raw.remove("__metadata__");
    let data_start = 8 + header_len;
    let mut entries = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let entry: Entry = serde_json::from_value(value)
            .map_err(|e| format!("the header's entry `{name}`: {e}"))?;
        let (begin, end) = entry.data_offsets;
        if begin > end || data_start + end > file_len {
            return Err(format!(
                "tensor `{name}`: bytes {begin}..{end} past the data's {} bytes",
                file_len - data_start
            ));
        }
        entries.push((name, entry));
    }
    Ok((data_start, entries))
}

/// One tensor's bytes read from the file and made a float32 tensor of its shape.
fn read_tensor(
    file: &File,
    data_start: u64,
    entry: &Entry,
    device: &Device,
) -> Result<Tensor, String> {
    let dtype = dtype_of(&entry.dtype)?;
    let (begin, end) = entry.data_offsets;
    let expected = entry.shape.iter().product::<usize>() * dtype.size_in_bytes();
    if (end - begin) as usize != expected {
        return Err(format!(
            "{} bytes for shape {:?} of {}, which needs {expected}",
            end - begin,
            entry.shape,
            entry.dtype
        ));
    }
    let mut bytes = vec![0u8; expected];
    file.read_exact_at(&mut bytes, data_start + begin)
        .map_err(|e| e.to_string())?;
    let tensor =
        Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, device).map_err(|e| e.to_string())?;
    drop(bytes);
    tensor.to_dtype(DType::F32).map_err(|e| e.to_string())
}

/// The candle dtype of a safetensors dtype name (the float and integer ones candle has).
fn dtype_of(name: &str) -> Result<DType, String> {
    Ok(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        other => return Err(format!("dtype {other} is not one a network here reads")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(tensors: &[(&str, Tensor)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        candle_core::safetensors::save(
            &tensors
                .iter()
                .map(|(n, t)| (n.to_string(), t.clone()))
                .collect::<HashMap<_, _>>(),
            file.path(),
        )
        .unwrap();
        file
    }

    #[test]
    fn reads_what_candle_wrote_in_every_float_dtype_as_float32() {
        let a = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap()
            .affine(0.37, -1.5)
            .unwrap();
        let file = written(&[
            ("a", a.clone()),
            ("half", a.to_dtype(DType::F16).unwrap()),
            ("brain", a.to_dtype(DType::BF16).unwrap()),
            ("scalar", Tensor::new(2.5f32, &Device::Cpu).unwrap()),
        ]);
        let read = load_f32(file.path(), &Device::Cpu).unwrap();
        assert_eq!(read.len(), 4);
        for name in ["a", "half", "brain"] {
            let t = &read[name];
            assert_eq!(t.dtype(), DType::F32, "{name}");
            assert_eq!(t.dims(), &[2, 3, 4], "{name}");
            let expected = a
                .to_dtype(candle_dtype(name))
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let difference: f32 = (t - &expected)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(difference, 0.0, "{name}");
        }
        assert_eq!(read["scalar"].to_scalar::<f32>().unwrap(), 2.5);
    }

    #[test]
    fn product_weights_are_stored_transposed_with_their_values_and_shape() {
        let w = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let mut tensors = HashMap::from([
            ("layer.fc1.weight".to_string(), w.clone()),
            ("layer.fc1.bias".to_string(), w.flatten_all().unwrap()),
            ("token_embedding.weight".to_string(), w.clone()),
            ("head.decoder.weight".to_string(), w.clone()),
        ]);
        transpose_product_weights(&mut tensors, |name| !name.starts_with("head.")).unwrap();
        let fc1 = &tensors["layer.fc1.weight"];
        assert_eq!(fc1.dims(), &[3, 4]);
        assert!(!fc1.is_contiguous(), "stored column by column");
        assert!(fc1.t().unwrap().is_contiguous());
        assert_eq!(fc1.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        for kept in ["token_embedding.weight", "head.decoder.weight"] {
            assert!(tensors[kept].is_contiguous(), "{kept}");
        }
        let x = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((2, 4))
            .unwrap();
        let product = x.matmul(&fc1.t().unwrap()).unwrap();
        let expected = x.matmul(&w.t().unwrap()).unwrap();
        assert_eq!(
            product.to_vec2::<f32>().unwrap(),
            expected.to_vec2::<f32>().unwrap()
        );
    }

    fn candle_dtype(name: &str) -> DType {
        match name {
            "half" => DType::F16,
            "brain" => DType::BF16,
            _ => DType::F32,
        }
    }

    #[test]
    fn a_truncated_or_foreign_file_is_refused() {
        let a = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
        let file = written(&[("weight", a)]);
        let whole = std::fs::read(file.path()).unwrap();
        std::fs::write(file.path(), &whole[..whole.len() - 100]).unwrap();
        let error = load_f32(file.path(), &Device::Cpu).unwrap_err();
        assert!(
            error.contains("tensor `weight`: bytes 0..16384 past"),
            "{error}"
        );
        std::fs::write(file.path(), b"not a checkpoint at all").unwrap();
        let error = load_f32(file.path(), &Device::Cpu).unwrap_err();
        assert!(error.contains("header"), "{error}");
    }

    #[test]
    fn a_size_that_does_not_match_the_shape_is_refused() {
        let header = br#"{"w":{"dtype":"F32","shape":[3,3],"data_offsets":[0,32]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 32]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        let error = load_f32(file.path(), &Device::Cpu).unwrap_err();
        assert!(
            error.contains("tensor `w`: 32 bytes for shape [3, 3]"),
            "{error}"
        );
    }
}
