//! PyTorch's legacy checkpoint format, as `torch.save` wrote it before torch 1.6 (and since,
//! with `_use_new_zipfile_serialization=False`).
//!
//! Several published post-processor weights predate the zip format candle reads (facexlib's
//! `detection_Resnet50_Final.pth`, rembg's `u2net.pth`), so without this a worker owner holding
//! them is told the file is unreadable. The format is a run of pickles (a magic number, the
//! protocol version 1001, a dict of system facts, the object itself, the sorted list of storage
//! keys) followed, for each key, by its element count (8 bytes, little-endian) and its raw
//! little-endian data. Tensors in the object are `torch._utils._rebuild_tensor_v2(storage,
//! offset, size, stride, …)` calls whose storage is a persistent id `("storage", torch.XStorage,
//! key, location, numel, view_metadata)`.
//!
//! The whole file is read into memory and parsed with bounds checked before every allocation:
//! a corrupt or truncated file gives an error naming what is wrong, never a panic or an
//! allocation larger than a small multiple of the file.

mod pickle;

use candle_core::{DType, Device, Layout, Shape, Tensor};
use pickle::{Cursor, Machine, Obj, Value};
use std::collections::HashMap;

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c), as `LONG1` pickles it.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i64 = 1001;
/// All tensors together may hold at most this many elements a byte of the file: a legitimate
/// file's tensors cover each stored element about once (tied weights a few times).
const ELEMENTS_PER_FILE_BYTE: u64 = 4;

/// The tensors of a legacy checkpoint's state dict, by name, in f32 on the CPU; a dict that
/// wraps its state dict in `params_ema` or `params` is unwrapped, preferring `params_ema`.
/// Tensors whose storage type has no f32 conversion here (bool, int8, complex) are left out.
pub(super) fn read(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let mut cursor = Cursor::new(bytes);
    let mut machine = Machine::default();
    header(&mut machine, &mut cursor)?;
    let root = machine.load(&mut cursor)?;
    let keys = machine.load(&mut cursor)?;
    let keys = strings(&machine, &keys).ok_or("the storage key list is not a list of strings")?;
    let storages = read_storages(&machine, &keys, &mut cursor)?;
    let entries = state_dict(&machine, &root)?;
    let mut budget = (bytes.len() as u64).saturating_mul(ELEMENTS_PER_FILE_BYTE);
    let mut tensors = Vec::new();
    for (name, value) in entries {
        let (Value::Str(name), Some(spec)) = (name, tensor_spec(&machine, value)?) else {
            continue;
        };
        let tensor = build(&spec, &storages, &mut budget).map_err(|e| format!("{name}: {e}"))?;
        tensors.extend(tensor.map(|t| (name.to_string(), t)));
    }
    if tensors.is_empty() {
        return Err("a legacy PyTorch checkpoint without tensors".into());
    }
    Ok(tensors)
}

/// The magic number, protocol version and system facts before the object.
fn header(machine: &mut Machine, cursor: &mut Cursor<'_>) -> Result<(), String> {
    let not_legacy = "neither a zip nor a legacy PyTorch checkpoint";
    let magic = machine.load(cursor).map_err(|_| not_legacy)?;
    if magic != Value::BigInt(MAGIC.as_slice().into()) {
        return Err(not_legacy.into());
    }
    match machine.load(cursor)? {
        Value::Int(PROTOCOL_VERSION) => {}
        other => return Err(format!("legacy protocol version {other:?}, not 1001")),
    }
    let info = machine.load(cursor)?;
    if dict_get(machine, &info, "little_endian") == Some(&Value::Bool(false)) {
        return Err("written on a big-endian machine, which this reader does not handle".into());
    }
    Ok(())
}

/// A storage's type and element count, as its persistent id declares them.
struct Declared<'m> {
    class: &'m str,
    numel: u64,
}

/// A storage's type and its bytes in the file.
struct Storage<'a> {
    class: String,
    bytes: &'a [u8],
}

/// Every storage the object's persistent ids declare, by key.
fn declared_storages(machine: &Machine) -> Result<HashMap<&str, Declared<'_>>, String> {
    let mut declared = HashMap::new();
    for obj in &machine.arena {
        // Ids that are no storage (or malformed ones) declare nothing; a storage they should
        // have declared is then missing below.
        let Some(id) = (match obj {
            Obj::Persistent(id) => persistent_id(machine, id),
            _ => None,
        }) else {
            continue;
        };
        let previous = declared.insert(
            id.key,
            Declared {
                class: id.class,
                numel: id.numel,
            },
        );
        if previous.is_some_and(|p| p.class != id.class || p.numel != id.numel) {
            return Err(format!("storage {} is declared twice, differently", id.key));
        }
    }
    Ok(declared)
}

/// The storages after the pickles, in the order of the key list, each checked against its
/// declaration.
fn read_storages<'a>(
    machine: &Machine,
    keys: &[&str],
    cursor: &mut Cursor<'a>,
) -> Result<HashMap<String, Storage<'a>>, String> {
    let declared = declared_storages(machine)?;
    let mut storages = HashMap::new();
    for &key in keys {
        let decl = declared
            .get(key)
            .ok_or_else(|| format!("storage {key} is listed but no tensor declares it"))?;
        let element = element_size(decl.class)
            .ok_or_else(|| format!("storage type {} is unknown", decl.class))?;
        let count = cursor.u64("a storage's element count")?;
        if count != decl.numel {
            return Err(format!(
                "storage {key}: the file counts {count} elements where its declaration says {}",
                decl.numel
            ));
        }
        let size = count
            .checked_mul(element)
            .ok_or_else(|| format!("storage {key}: {count} elements overflow"))?;
        let bytes = cursor.take(size, "a storage's data")?;
        let class = decl.class.to_string();
        storages.insert(key.to_string(), Storage { class, bytes });
    }
    Ok(storages)
}

/// The state dict: the root dict, or its `params_ema` or `params` when one holds tensors.
fn state_dict<'m>(machine: &'m Machine, root: &Value) -> Result<&'m [(Value, Value)], String> {
    let Some(Obj::Dict(entries)) = machine.obj(root) else {
        return Err("the checkpoint is not a dict of tensors".into());
    };
    for key in ["params_ema", "params"] {
        if let Some(Obj::Dict(inner)) = dict_get(machine, root, key).and_then(|v| machine.obj(v)) {
            if inner
                .iter()
                .any(|(_, v)| matches!(tensor_spec(machine, v), Ok(Some(_))))
            {
                return Ok(inner);
            }
        }
    }
    Ok(entries)
}

/// A persistent id `("storage", torch.XStorage, key, location, numel[, view_metadata])`.
struct PersistentId<'m> {
    class: &'m str,
    key: &'m str,
    numel: u64,
    /// A view's `(view key, offset, numel)` in the root storage (torch before 1.6 only).
    view: Option<(u64, u64)>,
}

fn persistent_id<'m>(machine: &'m Machine, id: &'m Value) -> Option<PersistentId<'m>> {
    let Some(Obj::Tuple(items)) = machine.obj(id) else {
        return None;
    };
    let [Value::Str(kind), Value::Global(_, class), Value::Str(key), _location, numel, rest @ ..] =
        items.as_slice()
    else {
        return None;
    };
    let view = match rest.first() {
        None | Some(Value::None) => None,
        Some(view) => match machine.obj(view) {
            Some(Obj::Tuple(v)) if v.len() == 3 => Some((uint(&v[1])?, uint(&v[2])?)),
            _ => return None,
        },
    };
    (&**kind == "storage").then_some(PersistentId {
        class,
        key,
        numel: uint(numel)?,
        view,
    })
}

/// Where a tensor lies: its storage and view, and its offset, sizes and strides in elements.
struct TensorSpec<'m> {
    storage: PersistentId<'m>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// `Some` when `value` is a tensor (`_rebuild_tensor_v2`, `_rebuild_tensor`, or a
/// `_rebuild_parameter` around one), `None` for anything else; an error when it is a tensor
/// whose arguments do not fit.
fn tensor_spec<'m>(
    machine: &'m Machine,
    value: &'m Value,
) -> Result<Option<TensorSpec<'m>>, String> {
    let mut value = value;
    for _ in 0..2 {
        let Some(Obj::Call {
            callable: Value::Global(module, name),
            args,
        }) = machine.obj(value)
        else {
            return Ok(None);
        };
        let Some(Obj::Tuple(args)) = machine.obj(args) else {
            return Ok(None);
        };
        match (&**module, &**name, args.first()) {
            ("torch._utils", "_rebuild_parameter", Some(data)) => value = data,
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor", _) => {
                return tensor_args(machine, args)
                    .map(Some)
                    .ok_or_else(|| "a tensor with arguments this reader does not know".into());
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

fn tensor_args<'m>(machine: &'m Machine, args: &'m [Value]) -> Option<TensorSpec<'m>> {
    let [storage, offset, size, stride, ..] = args else {
        return None;
    };
    let Some(Obj::Persistent(id)) = machine.obj(storage) else {
        return None;
    };
    Some(TensorSpec {
        storage: persistent_id(machine, id)?,
        offset: usize::try_from(uint(offset)?).ok()?,
        size: usizes(machine, size)?,
        stride: usizes(machine, stride)?,
    })
}

/// The tensor `spec` describes, in f32 on the CPU; `None` for a storage type without an f32
/// conversion. Charges the elements it reads to `budget`.
fn build(
    spec: &TensorSpec<'_>,
    storages: &HashMap<String, Storage<'_>>,
    budget: &mut u64,
) -> Result<Option<Tensor>, String> {
    let key = spec.storage.key;
    let storage = storages
        .get(key)
        .ok_or_else(|| format!("storage {key} is not in the file"))?;
    let Some(dtype) = candle_dtype(&storage.class) else {
        return Ok(None);
    };
    let element = dtype.size_in_bytes();
    let stored = storage.bytes.len() / element;
    let (base, len) = match spec.storage.view {
        None => (0, stored),
        Some((offset, numel)) => {
            let (offset, numel) = (to_usize(offset)?, to_usize(numel)?);
            if offset.checked_add(numel).is_none_or(|end| end > stored) {
                return Err(format!("a view reaches past storage {key}"));
            }
            (offset, numel)
        }
    };
    let (count, last) = extent(spec)?;
    let span = if count == 0 {
        0
    } else {
        last - spec.offset + 1
    };
    let charge = count.max(span) as u64;
    if charge > *budget {
        return Err("its tensors claim more elements than the file could hold".into());
    }
    *budget -= charge;
    if count == 0 {
        return Tensor::zeros(spec.size.as_slice(), DType::F32, &Device::Cpu)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    if last >= len {
        return Err(format!("reaches past the end of storage {key}"));
    }
    let start = (base + spec.offset) * element;
    let bytes = &storage.bytes[start..start + span * element];
    gather(bytes, dtype, span, spec).map(Some)
}

/// The element count of `spec` and the storage index of its last element.
fn extent(spec: &TensorSpec<'_>) -> Result<(usize, usize), String> {
    if spec.size.len() != spec.stride.len() {
        return Err("its sizes and strides differ in rank".into());
    }
    let overflow = || "its size overflows".to_string();
    let mut count = 1usize;
    let mut last = spec.offset;
    for (&size, &stride) in spec.size.iter().zip(&spec.stride) {
        count = count.checked_mul(size).ok_or_else(overflow)?;
        let reach = size.saturating_sub(1).checked_mul(stride);
        last = reach
            .and_then(|r| last.checked_add(r))
            .ok_or_else(overflow)?;
    }
    Ok((count, last))
}

/// The strided elements of `spec` from `bytes` (its `span` elements of `dtype`, starting at
/// its offset), in f32.
fn gather(
    bytes: &[u8],
    dtype: DType,
    span: usize,
    spec: &TensorSpec<'_>,
) -> Result<Tensor, String> {
    let err = |e: candle_core::Error| e.to_string();
    let values = Tensor::from_raw_buffer(bytes, dtype, &[span], &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(err)?;
    let layout = Layout::new(Shape::from(spec.size.clone()), spec.stride.clone(), 0);
    let mut out = Vec::with_capacity(layout.shape().elem_count());
    super::for_each_offset(&layout, |i| out.push(values[i]));
    Tensor::from_vec(out, spec.size.as_slice(), &Device::Cpu).map_err(err)
}

/// The candle dtype of a storage type that converts to f32.
fn candle_dtype(class: &str) -> Option<DType> {
    Some(match class {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "ByteStorage" => DType::U8,
        _ => return None,
    })
}

/// The bytes an element of a storage type takes, for every type torch writes.
fn element_size(class: &str) -> Option<u64> {
    Some(match class {
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        "ComplexDoubleStorage" => 16,
        _ => return None,
    })
}

fn dict_get<'m>(machine: &'m Machine, dict: &Value, key: &str) -> Option<&'m Value> {
    let Some(Obj::Dict(entries)) = machine.obj(dict) else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
        .map(|(_, v)| v)
}

fn strings<'m>(machine: &'m Machine, list: &Value) -> Option<Vec<&'m str>> {
    let (Some(Obj::List(items)) | Some(Obj::Tuple(items))) = machine.obj(list) else {
        return None;
    };
    items
        .iter()
        .map(|v| match v {
            Value::Str(s) => Some(&**s),
            _ => None,
        })
        .collect()
}

fn usizes(machine: &Machine, tuple: &Value) -> Option<Vec<usize>> {
    let Some(Obj::Tuple(items)) = machine.obj(tuple) else {
        return None;
    };
    items
        .iter()
        .map(|v| uint(v).and_then(|u| usize::try_from(u).ok()))
        .collect()
}

fn uint(value: &Value) -> Option<u64> {
    match value {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

fn to_usize(n: u64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("{n} does not fit in memory"))
}
