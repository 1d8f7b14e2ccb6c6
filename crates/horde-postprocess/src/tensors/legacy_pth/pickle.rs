//! A minimal, bounded pickle machine for the legacy checkpoint format.
//!
//! candle's own `pickle::Stack` reads zip checkpoints, but it panics on the legacy format's
//! first pickle (a 10-byte `LONG1` magic number overflows its shift in debug builds),
//! allocates whatever length a corrupt string opcode claims and deep-copies memoized objects
//! on every `BINGET`. This machine reads from an in-memory buffer, so every length is checked
//! against the bytes that remain before anything is allocated; lists, dicts and calls live in
//! an arena and are shared by index, so memory stays linear in the file's size whatever the
//! pickle does. It runs the opcodes of protocols 2 to 4 that `torch.save` emits; attribute
//! state (`BUILD`, e.g. a state dict's `_metadata`) is dropped, as nothing here needs it.

use std::collections::HashMap;
use std::rc::Rc;

/// A pickled value; containers and calls are indices into [`Machine::arena`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, little-endian two's complement bytes as pickled.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// `module.name`, as `GLOBAL` names it.
    Global(Rc<str>, Rc<str>),
    Ref(usize),
}

/// A container or call, in the arena.
#[derive(Debug)]
pub(super) enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or `collections.OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// `callable(*args)`, from `REDUCE` or `NEWOBJ`.
    Call {
        callable: Value,
        args: Value,
    },
    /// A persistent id, which `torch.save` gives each storage.
    Persistent(Value),
}

/// Reads bytes from a buffer, refusing to go past its end.
pub(super) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub(super) fn position(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// The next `n` bytes, or an error naming what was cut short.
    pub(super) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or_else(|| {
                format!(
                    "{what} at byte {} needs {n} bytes, {} remain (truncated?)",
                    self.pos,
                    self.remaining()
                )
            })?;
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>("an opcode argument")?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array("an opcode argument")?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array("an opcode argument")?))
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `\n`-terminated line (without it), as `GLOBAL` writes its names.
    fn line(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL name runs past the end of the file")?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }
}

/// The pickle machine: its stack, mark positions, memo, and the arena its values point into.
#[derive(Default)]
pub(super) struct Machine {
    pub(super) arena: Vec<Obj>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl Machine {
    /// Runs one pickle from `cursor` to its `STOP` and returns the value it builds. The arena
    /// keeps growing across calls; the stack and memo start afresh, as for a new `Unpickler`.
    pub(super) fn load(&mut self, cursor: &mut Cursor<'_>) -> Result<Value, String> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        loop {
            let at = cursor.position();
            let op = cursor
                .u8()
                .map_err(|_| "a pickle ends without STOP".to_string())?;
            if op == b'.' {
                return self.pop();
            }
            self.step(op, cursor)
                .map_err(|e| format!("pickle opcode {op:#04x} at byte {at}: {e}"))?;
        }
    }

    /// The object `value` points to, if it is a reference.
    pub(super) fn obj(&self, value: &Value) -> Option<&Obj> {
        match value {
            Value::Ref(i) => self.arena.get(*i),
            _ => None,
        }
    }

    fn step(&mut self, op: u8, c: &mut Cursor<'_>) -> Result<(), String> {
        match op {
            0x80 => drop(c.u8()?), // PROTO
            0x95 => drop(c.u64("a FRAME length")?),
            b'(' => self.marks.push(self.stack.len()),
            b'0' => drop(self.pop()?),
            b'1' => drop(self.pop_mark()?),
            b'2' => {
                let top = self.top()?.clone();
                self.push(top)
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => self.push(Value::Int(i64::from(c.u32()? as i32))),
            b'K' => self.push(Value::Int(i64::from(c.u8()?))),
            b'M' => self.push(Value::Int(i64::from(c.u16()?))),
            0x8a => {
                let n = c.u8()?;
                self.long(c.take(u64::from(n), "a LONG1")?)
            }
            0x8b => {
                let n = c.u32()?;
                self.long(c.take(u64::from(n), "a LONG4")?)
            }
            b'G' => self.push(Value::Float(f64::from_be_bytes(c.array("a float")?))),
            b'X' => self.string(c, |c| c.u32().map(u64::from))?,
            0x8c => self.string(c, |c| c.u8().map(u64::from))?,
            0x8d => self.string(c, |c| c.u64("a length"))?,
            // Python 2 `str` (BINSTRING, SHORT_BINSTRING): names in old checkpoints.
            b'T' => self.string(c, |c| c.u32().map(u64::from))?,
            b'U' => self.string(c, |c| c.u8().map(u64::from))?,
            b'B' => self.bytes(c, |c| c.u32().map(u64::from))?,
            b'C' => self.bytes(c, |c| c.u8().map(u64::from))?,
            0x8e => self.bytes(c, |c| c.u64("a length"))?,
            b'c' => {
                let module = String::from_utf8_lossy(c.line()?).into();
                let name = String::from_utf8_lossy(c.line()?).into();
                self.push(Value::Global(module, name))
            }
            0x93 => {
                let name = self.pop_str()?;
                let module = self.pop_str()?;
                self.push(Value::Global(module, name))
            }
            _ => self.step_containers(op, c)?,
        }
        Ok(())
    }

    fn step_containers(&mut self, op: u8, c: &mut Cursor<'_>) -> Result<(), String> {
        match op {
            b')' => self.alloc(Obj::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.alloc(Obj::Tuple(items))
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let start = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .ok_or("the stack is too short for a TUPLE")?;
                let items = self.stack.split_off(start);
                self.alloc(Obj::Tuple(items))
            }
            b']' => self.alloc(Obj::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.alloc(Obj::List(items))
            }
            b'a' => {
                let item = self.pop()?;
                self.list_of_top()?.push(item)
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.list_of_top()?.extend(items)
            }
            b'}' => self.alloc(Obj::Dict(Vec::new())),
            b'd' => {
                let items = pairs(self.pop_mark()?)?;
                self.alloc(Obj::Dict(items))
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.dict_of_top()?.push((key, value))
            }
            b'u' => {
                let items = pairs(self.pop_mark()?)?;
                self.dict_of_top()?.extend(items)
            }
            b'Q' => {
                let id = self.pop()?;
                self.alloc(Obj::Persistent(id))
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(callable, args)
            }
            b'b' => drop(self.pop()?), // BUILD: attribute state, not needed.
            _ => self.step_memo(op, c)?,
        }
        Ok(())
    }

    fn step_memo(&mut self, op: u8, c: &mut Cursor<'_>) -> Result<(), String> {
        let get = |m: &Self, id: u32| {
            m.memo
                .get(&id)
                .cloned()
                .ok_or_else(|| format!("memo {id} was never put"))
        };
        match op {
            b'h' => {
                let id = c.u8()?;
                self.push(get(self, id.into())?)
            }
            b'j' => {
                let id = c.u32()?;
                self.push(get(self, id)?)
            }
            b'q' => {
                let id = c.u8()?;
                self.memo_put(id.into())?
            }
            b'r' => {
                let id = c.u32()?;
                self.memo_put(id)?
            }
            0x94 => {
                let id = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                self.memo_put(id)?
            }
            _ => return Err("an opcode this reader does not know".into()),
        }
        Ok(())
    }

    fn push(&mut self, value: Value) {
        self.stack.push(value)
    }

    fn alloc(&mut self, obj: Obj) {
        self.arena.push(obj);
        self.push(Value::Ref(self.arena.len() - 1))
    }

    fn top(&self) -> Result<&Value, String> {
        self.stack.last().ok_or_else(|| "the stack is empty".into())
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("popping past a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "the stack is empty".into())
    }

    fn pop_str(&mut self) -> Result<Rc<str>, String> {
        match self.pop()? {
            Value::Str(s) => Ok(s),
            other => Err(format!("expected a string, got {other:?}")),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        if mark > self.stack.len() {
            return Err("the stack fell below its MARK".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, id: u32) -> Result<(), String> {
        let value = self.top()?.clone();
        self.memo.insert(id, value);
        Ok(())
    }

    fn long(&mut self, bytes: &[u8]) {
        let value = if bytes.len() <= 8 {
            let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut le = [fill; 8];
            le[..bytes.len()].copy_from_slice(bytes);
            Value::Int(i64::from_le_bytes(le))
        } else {
            Value::BigInt(bytes.into())
        };
        self.push(value)
    }

    fn string(
        &mut self,
        c: &mut Cursor<'_>,
        len: impl Fn(&mut Cursor<'_>) -> Result<u64, String>,
    ) -> Result<(), String> {
        let n = len(c)?;
        let text = String::from_utf8_lossy(c.take(n, "a string")?);
        self.push(Value::Str(text.into()));
        Ok(())
    }

    fn bytes(
        &mut self,
        c: &mut Cursor<'_>,
        len: impl Fn(&mut Cursor<'_>) -> Result<u64, String>,
    ) -> Result<(), String> {
        let n = len(c)?;
        let bytes = c.take(n, "a bytes object")?;
        self.push(Value::Bytes(bytes.into()));
        Ok(())
    }

    /// `REDUCE`: an `OrderedDict()` becomes a dict that `SETITEMS` fills; any other call is
    /// kept for the reader to interpret.
    fn call(&mut self, callable: Value, args: Value) {
        let is_dict = matches!(&callable, Value::Global(m, n)
            if &**m == "collections" && (&**n == "OrderedDict" || &**n == "defaultdict"));
        if is_dict {
            self.alloc(Obj::Dict(Vec::new()))
        } else {
            self.alloc(Obj::Call { callable, args })
        }
    }

    fn list_of_top(&mut self) -> Result<&mut Vec<Value>, String> {
        match self.top()?.clone() {
            Value::Ref(i) => match self.arena.get_mut(i) {
                Some(Obj::List(items)) => Ok(items),
                _ => Err("APPEND to something not a list".into()),
            },
            _ => Err("APPEND to something not a list".into()),
        }
    }

    fn dict_of_top(&mut self) -> Result<&mut Vec<(Value, Value)>, String> {
        match self.top()?.clone() {
            Value::Ref(i) => match self.arena.get_mut(i) {
                Some(Obj::Dict(items)) => Ok(items),
                _ => Err("SETITEM on something not a dict".into()),
            },
            _ => Err("SETITEM on something not a dict".into()),
        }
    }
}

/// `[k0, v0, k1, v1, …]` as pairs.
fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("an odd number of dict items".into());
    }
    let mut items = items.into_iter();
    let mut out = Vec::with_capacity(items.len() / 2);
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<(Value, Machine), String> {
        let mut machine = Machine::default();
        let value = machine.load(&mut Cursor::new(bytes))?;
        Ok((value, machine))
    }

    #[test]
    fn a_string_longer_than_the_file_is_refused_before_allocating() {
        let error = run(b"\x80\x02X\xff\xff\xff\xffab.").err().unwrap();
        assert!(error.contains("truncated"), "{error}");
        let error = run(b"\x8d\xff\xff\xff\xff\xff\xff\xff\xffab.")
            .err()
            .unwrap();
        assert!(error.contains("truncated"), "{error}");
    }

    #[test]
    fn shared_lists_stay_linear_in_memory() {
        // x = []; then 40 times: x = [x, x] through the memo. Copying would take 2^40 lists.
        let mut pickle = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            pickle.extend_from_slice(b"](h\x00h\x00eq\x00");
        }
        pickle.push(b'.');
        let (value, machine) = run(&pickle).unwrap();
        assert_eq!(machine.arena.len(), 41);
        let Some(Obj::List(items)) = machine.obj(&value) else {
            panic!("{value:?}")
        };
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn wide_and_narrow_longs_and_marks_are_checked() {
        let (value, _) = run(b"\x8a\x02\xff\xff.").unwrap();
        assert_eq!(value, Value::Int(-1));
        let (value, _) = run(b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.").unwrap();
        assert!(matches!(value, Value::BigInt(b) if b.len() == 10));
        assert!(run(b"K\x01(t\x85\x85u.").is_err(), "SETITEMS on a tuple");
        assert!(run(b"(K\x01\x86t.").is_err(), "TUPLE2 across a MARK");
        assert!(run(b"h\x05.").is_err(), "an unset memo");
        assert!(run(b"K\x01").is_err(), "no STOP");
    }
}
