//! Pickled PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`) converted to `.safetensors`, the one
//! single-file format the engine memory-maps (`checkpoint`). 67 of the AI Horde model
//! reference's 161 models, `stable_diffusion` (model_1_5.ckpt) among them, are only published
//! as pickles; the worker converts each once after downloading it, and `horde model convert`
//! does it by hand.
//!
//! The conversion streams: the tensors' names, dtypes, shapes and strides are read first (the
//! pickle, `data.pkl`, holds no tensor data), the safetensors header is written from them, then
//! each tensor's bytes are copied from its storage one tensor at a time. Memory stays around the
//! largest tensor (a contiguous tensor is copied in fixed-size chunks), not the 2–7 GB file.
//!
//! The format read is torch's zip serialization (torch ≥ 1.6): `<prefix>/data.pkl`, a pickle in
//! which every tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`
//! and every storage a persistent id naming the record `<prefix>/data/<key>` that holds its raw
//! little-endian elements. The zip container is read here (torch writes its records
//! uncompressed; zip64 for files over 4 GB), so that any view can be copied, not only the
//! contiguous and transposed ones candle's `PthTensors` reads, and no storage type is dropped
//! unseen. The state dict is the top-level dict or what it holds under `state_dict`, `model` or
//! `module`; entries that are not tensors (`global_step`, optimizer state, …) are skipped and
//! listed in the [`ConvertSummary`], and so are the EMA copies (`model_ema.*`) of a checkpoint
//! that also has the model's own weights: the engine never reads them, and they double the size.
//!
//! **No code in the file runs.** The pickle is interpreted by candle's `pickle::Stack`, which
//! knows a fixed set of opcodes and builds plain data from them: a `GLOBAL` only records the
//! module and name it mentions, a `REDUCE` only records the call it describes; nothing is
//! imported or called, and an opcode it does not know stops the conversion. A pickle that would
//! run code when Python loads it (a `REDUCE` of `os.system`, say) converts like any other: that
//! entry is not a tensor and is skipped, named in the summary.

use crate::Error;
use candle_core::pickle::{Object, Stack};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What [`convert_to_safetensors`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    /// Tensors written.
    pub tensors: usize,
    /// What was left out, each with the reason (`global_step (not a tensor: an int)`).
    pub skipped: Vec<String>,
    /// The size of the written `.safetensors` file.
    pub bytes: u64,
}

/// Keys under which a checkpoint may keep its state dict, looked into in this order.
const WRAPPERS: [&str; 3] = ["state_dict", "model", "module"];
/// Prefix of the EMA weights that Stable Diffusion checkpoints may carry beside the model's own.
const EMA_PREFIX: &str = "model_ema.";
/// Prefix of the UNet's weights: with them present, the EMA copies are not needed.
const MODEL_PREFIX: &str = "model.diffusion_model.";
/// The pickled magic number that starts a legacy (pre-1.6) `torch.save` file.
const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];
/// Chunk size for copying a contiguous tensor.
const CHUNK: u64 = 8 << 20;

/// Converts the pickled checkpoint `src` to the single-file `.safetensors` `dst`: the same tensor
/// names, shapes, dtypes and bytes (views made contiguous). Written beside it with the extension
/// `.safetensors.part` (`dst.with_extension("safetensors.part")`) and renamed to `dst` when
/// complete, so `dst` is never a partial file. Errors name the file and what is wrong with it.
pub fn convert_to_safetensors(src: &Path, dst: &Path) -> Result<ConvertSummary, Error> {
    let mut archive = Archive::open(src)?;
    let (tensors, skipped) = read_tensor_index(&mut archive)?;
    let part = dst.with_extension("safetensors.part");
    let written = write_safetensors(&mut archive, &tensors, &part);
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, dst).map_err(|e| fail(dst, format!("cannot rename {part:?}: {e}")))?;
    Ok(ConvertSummary {
        tensors: tensors.len(),
        skipped,
        bytes,
    })
}

fn fail(path: &Path, reason: impl Into<String>) -> Error {
    Error::Convert {
        path: path.into(),
        reason: reason.into(),
    }
}

/// One tensor of the checkpoint: where its elements are and how they are laid out.
#[derive(Debug, Clone)]
struct Stored {
    /// safetensors' name of the dtype (`F32`, `I64`, …).
    dtype: &'static str,
    /// Bytes per element.
    size: usize,
    shape: Vec<usize>,
    /// Strides and offset in elements, as torch stores them.
    stride: Vec<usize>,
    offset: usize,
    /// The zip record of its storage, and the storage's length in elements.
    record: String,
    storage_len: usize,
}

impl Stored {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn nbytes(&self) -> u64 {
        (self.numel() * self.size) as u64
    }

    /// Whether the elements lie in row-major order, one after the other.
    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&dim, &stride) in self.shape.iter().zip(&self.stride).rev() {
            if dim != 1 && stride != expected {
                return false;
            }
            expected *= dim;
        }
        true
    }

    /// One past the last element of the storage the tensor reads (its offset when empty).
    fn end(&self) -> usize {
        if self.numel() == 0 {
            return self.offset;
        }
        let last: usize = self
            .shape
            .iter()
            .zip(&self.stride)
            .map(|(&d, &s)| (d - 1) * s)
            .sum();
        self.offset + last + 1
    }
}

/// safetensors' dtype and the element size of a torch storage class.
fn storage_dtype(class: &str) -> Option<(&'static str, usize)> {
    Some(match class {
        "FloatStorage" => ("F32", 4),
        "HalfStorage" => ("F16", 2),
        "BFloat16Storage" => ("BF16", 2),
        "DoubleStorage" => ("F64", 8),
        "LongStorage" => ("I64", 8),
        "IntStorage" => ("I32", 4),
        "ShortStorage" => ("I16", 2),
        "CharStorage" => ("I8", 1),
        "ByteStorage" => ("U8", 1),
        "BoolStorage" => ("BOOL", 1),
        "Float8_e4m3fnStorage" => ("F8_E4M3", 1),
        "Float8_e5m2Storage" => ("F8_E5M2", 1),
        _ => return None,
    })
}

/// The tensors to write, by name, and what is skipped. Reads only the pickle.
fn read_tensor_index(
    archive: &mut Archive,
) -> Result<(BTreeMap<String, Stored>, Vec<String>), Error> {
    let pickle = archive.read_record(&format!("{}/data.pkl", archive.prefix))?;
    let mut stack = Stack::empty();
    let top = stack
        .read_loop(&mut std::io::Cursor::new(pickle))
        .and_then(|()| stack.finalize())
        .map_err(|e| archive.fail(format!("cannot read its pickle (data.pkl): {e}")))?;
    let mut skipped = Vec::new();
    let entries = state_dict(top, &mut skipped).map_err(|e| archive.fail(e))?;
    let mut tensors = BTreeMap::new();
    for (key, value) in entries {
        let Object::Unicode(name) = key else {
            skipped.push(format!("{key:?} (not a tensor name)"));
            continue;
        };
        match tensor_of(value) {
            Ok(stored) => {
                archive.check(&name, &stored)?;
                tensors.insert(name, stored);
            }
            Err(what) => skipped.push(format!("{name} (not a tensor: {what})")),
        }
    }
    // candle's reader may reverse a dict's order (SETITEMS): list them by name.
    skipped.sort();
    if tensors.is_empty() {
        let what = skipped
            .iter()
            .take(4)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        return Err(archive.fail(format!("its state dict holds no tensor: {what}")));
    }
    skip_ema(&mut tensors, &mut skipped);
    Ok((tensors, skipped))
}

/// The state dict's entries: the top-level dict, or the one it holds under a [`WRAPPERS`] key
/// (again and again); the wrapper's other entries are skipped.
fn state_dict(top: Object, skipped: &mut Vec<String>) -> Result<Vec<(Object, Object)>, String> {
    let mut entries = match top {
        Object::Dict(entries) => entries,
        other => return Err(format!("its pickle holds {}, not a dict", describe(&other))),
    };
    let mut path = String::new();
    while let Some(at) = WRAPPERS.iter().find_map(|w| wrapper_at(&entries, w)) {
        let (key, inner) = entries.remove(at);
        let key = key.unicode().unwrap_or_default();
        for (other, value) in &entries {
            skipped.push(format!(
                "{path}{} (beside {key}: {})",
                key_text(other),
                describe(value)
            ));
        }
        path = format!("{path}{key}/");
        entries = inner.dict().unwrap_or_default();
    }
    Ok(entries)
}

fn wrapper_at(entries: &[(Object, Object)], wrapper: &str) -> Option<usize> {
    entries.iter().position(|(k, v)| {
        matches!(k, Object::Unicode(name) if name == wrapper) && matches!(v, Object::Dict(_))
    })
}

fn key_text(key: &Object) -> String {
    match key {
        Object::Unicode(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// A short description of a pickled value, for the skipped list.
fn describe(value: &Object) -> String {
    match value {
        Object::Int(_) | Object::Long(_) => "an int".into(),
        Object::Float(_) => "a float".into(),
        Object::Unicode(_) => "a string".into(),
        Object::Bool(_) => "a bool".into(),
        Object::None => "None".into(),
        Object::Tuple(_) | Object::List(_) => "a sequence".into(),
        Object::Dict(_) => "a dict".into(),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match &**callable {
            Object::Class {
                module_name,
                class_name,
            } => format!("a {module_name}.{class_name} object, never run"),
            _ => "an object".into(),
        },
        _ => "an unknown value".into(),
    }
}

/// The tensor a pickled value rebuilds, or what it is instead.
fn tensor_of(value: Object) -> Result<Stored, String> {
    let described = describe(&value);
    let Object::Reduce { callable, args } = value else {
        return Err(described);
    };
    let Object::Class {
        module_name,
        class_name,
    } = *callable
    else {
        return Err(described);
    };
    let mut args = args.tuple().map_err(|_| described.clone())?;
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") => rebuild_tensor(args),
        // nn.Parameter(tensor, requires_grad, hooks)
        ("torch._utils", "_rebuild_parameter") if !args.is_empty() => {
            tensor_of(args.swap_remove(0))
        }
        // A tensor subclass: (rebuild function, type, its arguments, state)
        ("torch._tensor", "_rebuild_from_type_v2") if args.len() >= 3 => {
            let inner = args.swap_remove(2);
            let func = args.swap_remove(0);
            tensor_of(Object::Reduce {
                callable: Box::new(func),
                args: Box::new(inner),
            })
        }
        _ => Err(described),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, …)`.
fn rebuild_tensor(mut args: Vec<Object>) -> Result<Stored, String> {
    if args.len() < 4 {
        return Err("a tensor with too few rebuild arguments".into());
    }
    let stride = usizes(args.swap_remove(3)).ok_or("a tensor with a malformed stride")?;
    let shape = usizes(args.swap_remove(2)).ok_or("a tensor with a malformed size")?;
    let offset = usize_of(args.swap_remove(1)).ok_or("a tensor with a malformed offset")?;
    let Object::PersistentLoad(id) = args.swap_remove(0) else {
        return Err("a tensor without a storage".into());
    };
    // ('storage', torch.FloatStorage, key, location, numel)
    let id = id
        .tuple()
        .map_err(|_| "a tensor with a malformed storage id")?;
    let [_, Object::Class { class_name, .. }, Object::Unicode(key), _, len] = &id[..] else {
        return Err("a tensor with a malformed storage id".into());
    };
    let (dtype, size) =
        storage_dtype(class_name).ok_or(format!("a tensor of {class_name}, unsupported"))?;
    let storage_len = usize_of(len.clone()).ok_or("a storage of malformed length")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "a tensor of {} sizes but {} strides",
            shape.len(),
            stride.len()
        ));
    }
    Ok(Stored {
        dtype,
        size,
        shape,
        stride,
        offset,
        record: format!("data/{key}"),
        storage_len,
    })
}

fn usize_of(value: Object) -> Option<usize> {
    usize::try_from(value.int_or_long().ok()?).ok()
}

fn usizes(value: Object) -> Option<Vec<usize>> {
    let items = match value {
        Object::Tuple(items) | Object::List(items) => items,
        _ => return None,
    };
    items.into_iter().map(usize_of).collect()
}

/// Leaves out the EMA copies of a checkpoint that also has the model's own weights.
fn skip_ema(tensors: &mut BTreeMap<String, Stored>, skipped: &mut Vec<String>) {
    if !tensors.keys().any(|k| k.starts_with(MODEL_PREFIX)) {
        return;
    }
    let before = tensors.len();
    tensors.retain(|name, _| !name.starts_with(EMA_PREFIX));
    let ema = before - tensors.len();
    if ema > 0 {
        skipped.push(format!(
            "{EMA_PREFIX}* ({ema} EMA tensors: the engine reads the model's own weights)"
        ));
    }
}

/// Writes the safetensors file: header, then each tensor's bytes in the header's order.
/// Returns the file's size.
fn write_safetensors(
    archive: &mut Archive,
    tensors: &BTreeMap<String, Stored>,
    path: &Path,
) -> Result<u64, Error> {
    let header = header_bytes(tensors);
    let file = File::create(path).map_err(|e| fail(path, format!("cannot create: {e}")))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let write_err = |e: std::io::Error| fail(path, format!("cannot write: {e}"));
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .map_err(write_err)?;
    for (name, stored) in tensors {
        archive.copy_tensor(name, stored, &mut out, path)?;
    }
    let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    let data: u64 = tensors.values().map(Stored::nbytes).sum();
    Ok(8 + header.len() as u64 + data)
}

/// The JSON header, padded with spaces to a multiple of 8 bytes (as the format allows).
fn header_bytes(tensors: &BTreeMap<String, Stored>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut start = 0u64;
    for (name, stored) in tensors {
        let end = start + stored.nbytes();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": stored.dtype,
                "shape": stored.shape,
                "data_offsets": [start, end],
            }),
        );
        start = end;
    }
    let mut bytes = serde_json::to_vec(&header).expect("a JSON map serializes");
    bytes.resize(bytes.len().div_ceil(8) * 8, b' ');
    bytes
}

/// Where a stored (uncompressed) zip record's bytes are.
#[derive(Debug, Clone, Copy)]
struct Record {
    start: u64,
    len: u64,
}

/// A torch zip checkpoint: its records by name, and the folder they are in (`archive`, or the
/// file's stem for files written by torch 1.6–1.x).
struct Archive {
    path: PathBuf,
    file: File,
    records: HashMap<String, Record>,
    prefix: String,
}

impl Archive {
    fn open(path: &Path) -> Result<Archive, Error> {
        let mut file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => fail(path, "no such file"),
            _ => fail(path, format!("cannot open: {e}")),
        })?;
        check_magic(path, &mut file)?;
        let records = zip::records(&mut file).map_err(|e| fail(path, e))?;
        let prefix = records
            .keys()
            .filter_map(|name| name.strip_suffix("/data.pkl"))
            .find(|prefix| !prefix.contains('/'))
            .ok_or_else(|| {
                fail(
                    path,
                    "a zip file without data.pkl: not a PyTorch checkpoint",
                )
            })?
            .to_string();
        let archive = Archive {
            path: path.into(),
            file,
            records,
            prefix,
        };
        archive.check_byte_order()?;
        Ok(archive)
    }

    fn fail(&self, reason: impl Into<String>) -> Error {
        fail(&self.path, reason)
    }

    fn record(&self, name: &str) -> Result<Record, Error> {
        self.records
            .get(name)
            .copied()
            .ok_or_else(|| self.fail(format!("its record {name} is missing")))
    }

    fn read_record(&mut self, name: &str) -> Result<Vec<u8>, Error> {
        let record = self.record(name)?;
        let mut bytes = vec![0; record.len as usize];
        self.read_at(record.start, &mut bytes)?;
        Ok(bytes)
    }

    fn read_at(&mut self, at: u64, bytes: &mut [u8]) -> Result<(), Error> {
        self.file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.read_exact(bytes))
            .map_err(|e| fail(&self.path, format!("cannot read: {e} (is it truncated?)")))
    }

    /// Refuses a big-endian checkpoint (torch writes `byteorder` since 2.1; older is little).
    fn check_byte_order(&self) -> Result<(), Error> {
        let name = format!("{}/byteorder", self.prefix);
        let Some(&record) = self.records.get(&name) else {
            return Ok(());
        };
        let mut bytes = vec![0; record.len.min(16) as usize];
        let mut file = &self.file;
        file.seek(SeekFrom::Start(record.start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| self.fail(format!("cannot read its byteorder: {e}")))?;
        match &bytes[..] {
            b"little" => Ok(()),
            other => Err(self.fail(format!(
                "its tensors are stored {:?}-endian; only little-endian is read",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// Checks that `stored`'s storage record exists and holds every element the tensor reads.
    fn check(&self, name: &str, stored: &Stored) -> Result<(), Error> {
        let record = self.record(&format!("{}/{}", self.prefix, stored.record))?;
        let needed = stored.end();
        if needed > stored.storage_len || (stored.storage_len * stored.size) as u64 > record.len {
            return Err(self.fail(format!(
                "tensor {name} reads {needed} elements of a storage of {} ({} bytes in {})",
                stored.storage_len, record.len, stored.record
            )));
        }
        Ok(())
    }

    /// Writes `stored`'s elements to `out`, in row-major order.
    fn copy_tensor(
        &mut self,
        name: &str,
        stored: &Stored,
        out: &mut impl Write,
        dst: &Path,
    ) -> Result<(), Error> {
        let record = self.record(&format!("{}/{}", self.prefix, stored.record))?;
        let write_err = |e: std::io::Error| fail(dst, format!("cannot write {name}: {e}"));
        let first = record.start + (stored.offset * stored.size) as u64;
        if stored.is_contiguous() {
            let mut left = stored.nbytes();
            let mut buffer = vec![0; left.min(CHUNK) as usize];
            let mut at = first;
            while left > 0 {
                let chunk = &mut buffer[..left.min(CHUNK) as usize];
                self.read_at(at, chunk)?;
                out.write_all(chunk).map_err(write_err)?;
                at += chunk.len() as u64;
                left -= chunk.len() as u64;
            }
            return Ok(());
        }
        let mut span = vec![0; (stored.end() - stored.offset) * stored.size];
        self.read_at(first, &mut span)?;
        out.write_all(&gather(&span, stored)).map_err(write_err)
    }
}

/// The elements of a strided view of `span` (its storage from the view's offset on), in
/// row-major order.
fn gather(span: &[u8], stored: &Stored) -> Vec<u8> {
    let size = stored.size;
    let mut out = Vec::with_capacity(stored.numel() * size);
    let mut index = vec![0usize; stored.shape.len()];
    for _ in 0..stored.numel() {
        let at: usize = index.iter().zip(&stored.stride).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&span[at * size..(at + 1) * size]);
        // Advance the multi-index, the last dimension fastest.
        for dim in (0..index.len()).rev() {
            index[dim] += 1;
            if index[dim] < stored.shape[dim] {
                break;
            }
            index[dim] = 0;
        }
    }
    out
}

/// Refuses what is not a zip file, naming what it is instead when that is recognisable.
fn check_magic(path: &Path, file: &mut File) -> Result<(), Error> {
    let mut head = [0u8; 512];
    let read = read_up_to(file, &mut head).map_err(|e| fail(path, format!("cannot read: {e}")))?;
    let head = &head[..read];
    if head.starts_with(b"PK\x03\x04") {
        return Ok(());
    }
    let legacy = head.starts_with(&LEGACY_MAGIC) || head.get(257..262) == Some(b"ustar");
    let reason = if legacy {
        "is a legacy (pre-1.6) PyTorch file; re-save it with torch.save or convert it to \
         .safetensors"
    } else if head.first() == Some(&0x80) {
        "is a plain pickle, not a PyTorch checkpoint"
    } else if head.len() > 8 && head[8] == b'{' {
        "is a safetensors file already: load it as it is"
    } else {
        "is not a PyTorch checkpoint (no zip archive)"
    };
    Err(fail(path, reason))
}

fn read_up_to(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The zip container, as far as torch writes it: the central directory (zip64 included) and
/// stored records; a compressed or encrypted record is refused.
mod zip {
    use super::{read_up_to, Record};
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::{Seek, SeekFrom};

    const END: u64 = 0x0605_4b50;
    const END64: u64 = 0x0606_4b50;
    const END64_LOCATOR: u64 = 0x0706_4b50;
    const CENTRAL: u64 = 0x0201_4b50;
    const LOCAL: u64 = 0x0403_4b50;
    /// The end record (22 bytes) and the longest comment.
    const TAIL: u64 = 22 + 0xffff;

    fn u16_at(b: &[u8], at: usize) -> u64 {
        u16::from_le_bytes([b[at], b[at + 1]]) as u64
    }

    fn u32_at(b: &[u8], at: usize) -> u64 {
        u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u64
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }

    fn read_at(file: &mut File, at: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut bytes = vec![0; len];
        file.seek(SeekFrom::Start(at))
            .and_then(|_| read_up_to(file, &mut bytes))
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|n| {
                (n == len)
                    .then_some(bytes)
                    .ok_or_else(|| "a truncated zip archive".to_string())
            })
    }

    /// Every record of the archive, by name.
    pub(super) fn records(file: &mut File) -> Result<HashMap<String, Record>, String> {
        let file_len = file.metadata().map_err(|e| e.to_string())?.len();
        let (count, directory, directory_len) = directory(file, file_len)?;
        let bytes = read_at(file, directory, directory_len as usize)?;
        let mut records = HashMap::new();
        let mut at = 0;
        for _ in 0..count {
            let (name, record, next) = central_entry(file, &bytes, at, file_len)?;
            records.insert(name, record);
            at = next;
        }
        Ok(records)
    }

    /// The number of records, and where the central directory is and its length.
    fn directory(file: &mut File, file_len: u64) -> Result<(u64, u64, u64), String> {
        let tail_start = file_len.saturating_sub(TAIL);
        let tail = read_at(file, tail_start, (file_len - tail_start) as usize)?;
        let end = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| u32_at(&tail, i) == END)
            .ok_or("a truncated zip archive (no end of central directory)")?;
        let (count, len, offset) = (
            u16_at(&tail, end + 10),
            u32_at(&tail, end + 12),
            u32_at(&tail, end + 16),
        );
        if count != 0xffff && len != 0xffff_ffff && offset != 0xffff_ffff {
            return Ok((count, offset, len));
        }
        // zip64: the locator just before the end record points at the zip64 end record.
        let locator_at = (tail_start + end as u64)
            .checked_sub(20)
            .ok_or("a malformed zip64 archive")?;
        let locator = read_at(file, locator_at, 20)?;
        if u32_at(&locator, 0) != END64_LOCATOR {
            return Err("a malformed zip64 archive (no locator)".into());
        }
        let end64 = read_at(file, u64_at(&locator, 8), 56)?;
        if u32_at(&end64, 0) != END64 {
            return Err("a malformed zip64 archive (no zip64 end record)".into());
        }
        Ok((u64_at(&end64, 32), u64_at(&end64, 48), u64_at(&end64, 40)))
    }

    /// The central-directory entry at `at`: its name, its data, and where the next entry is.
    fn central_entry(
        file: &mut File,
        bytes: &[u8],
        at: usize,
        file_len: u64,
    ) -> Result<(String, Record, usize), String> {
        let fixed = bytes
            .get(at..at + 46)
            .filter(|b| u32_at(b, 0) == CENTRAL)
            .ok_or("a malformed zip central directory")?;
        let (flags, method) = (u16_at(fixed, 8), u16_at(fixed, 10));
        let (compressed, mut len, mut offset) =
            (u32_at(fixed, 20), u32_at(fixed, 24), u32_at(fixed, 42));
        let (name_len, extra_len, comment_len) = (
            u16_at(fixed, 28) as usize,
            u16_at(fixed, 30) as usize,
            u16_at(fixed, 32) as usize,
        );
        let variable = bytes
            .get(at + 46..at + 46 + name_len + extra_len)
            .ok_or("a malformed zip central directory")?;
        let name = String::from_utf8_lossy(&variable[..name_len]).into_owned();
        if flags & 1 != 0 || method != 0 {
            return Err(format!(
                "its record {name} is encrypted or compressed (method {method}); torch writes \
                 them stored: re-save it with torch.save"
            ));
        }
        zip64_extra(&variable[name_len..], &mut len, compressed, &mut offset);
        let start = data_start(file, offset)?;
        if start + len > file_len {
            return Err(format!(
                "its record {name} runs past the end: is it truncated?"
            ));
        }
        let next = at + 46 + name_len + extra_len + comment_len;
        Ok((name, Record { start, len }, next))
    }

    /// Replaces the (uncompressed) length and the offset that a zip64 extra field holds in
    /// place of 0xffffffff; its values come in the order uncompressed, compressed, offset.
    fn zip64_extra(extra: &[u8], len: &mut u64, compressed: u64, offset: &mut u64) {
        let mut at = 0;
        while at + 4 <= extra.len() {
            let (id, size) = (u16_at(extra, at), u16_at(extra, at + 2) as usize);
            let field = &extra[(at + 4).min(extra.len())..(at + 4 + size).min(extra.len())];
            if id == 1 {
                let mut values = field.chunks_exact(8).map(|c| u64_at(c, 0));
                if *len == 0xffff_ffff {
                    *len = values.next().unwrap_or(*len);
                }
                if compressed == 0xffff_ffff {
                    values.next();
                }
                if *offset == 0xffff_ffff {
                    *offset = values.next().unwrap_or(*offset);
                }
            }
            at += 4 + size;
        }
    }

    /// Where a record's data starts: after its local header, whose name and extra field may
    /// differ in length from the central directory's (torch pads the extra field to align).
    fn data_start(file: &mut File, offset: u64) -> Result<u64, String> {
        let local = read_at(file, offset, 30)?;
        if u32_at(&local, 0) != LOCAL {
            return Err("a malformed zip archive (no local header where one should be)".into());
        }
        Ok(offset + 30 + u16_at(&local, 26) + u16_at(&local, 28))
    }
}
