//! Writing a GGUF file (version 3) as a stream: the header and every tensor's description first,
//! then each tensor's bytes as it is converted, so that no more than one tensor is in memory.
//!
//! The layout is gguf-py's `GGUFWriter` (what llama.cpp's converter writes): metadata in the
//! order added, tensor data aligned to 32 bytes in the order the tensors were described.

use std::io::{self, Seek, Write};

/// The alignment of tensor data (GGUF's default; `general.alignment` is then not written).
pub const ALIGNMENT: u64 = 32;

/// A tensor's element type in the file (ggml's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: an f16 scale and 32 signed bytes.
    Q8_0,
}

impl TensorType {
    /// ggml's number for the type.
    pub fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 8,
            Self::Bf16 => 30,
        }
    }

    /// ggml's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q8_0 => "Q8_0",
            Self::Bf16 => "BF16",
        }
    }

    /// Bytes a tensor of `elements` takes (`elements` a multiple of 32 for Q8_0).
    pub fn bytes(self, elements: u64) -> u64 {
        match self {
            Self::F32 => elements * 4,
            Self::F16 | Self::Bf16 => elements * 2,
            Self::Q8_0 => elements / 32 * 34,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of strings.
    Strings(Vec<String>),
    /// An array of `i32`.
    I32s(Vec<i32>),
    /// An array of `f32`.
    F32s(Vec<f32>),
}

const TYPE_U32: u32 = 4;
const TYPE_I32: u32 = 5;
const TYPE_F32: u32 = 6;
const TYPE_BOOL: u32 = 7;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

/// A tensor as the header describes it.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Its GGUF name.
    pub name: String,
    /// Its shape, outermost first (as numpy and safetensors give it; written reversed).
    pub shape: Vec<u64>,
    /// Its element type.
    pub kind: TensorType,
}

impl TensorInfo {
    /// Its element count.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Its size in the file, before padding.
    pub fn bytes(&self) -> u64 {
        self.kind.bytes(self.elements())
    }
}

fn padding(offset: u64) -> u64 {
    (ALIGNMENT - offset % ALIGNMENT) % ALIGNMENT
}

fn put_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn put_value(out: &mut impl Write, value: &Value) -> io::Result<()> {
    match value {
        Value::U32(v) => {
            out.write_all(&TYPE_U32.to_le_bytes())?;
            out.write_all(&v.to_le_bytes())
        }
        Value::I32(v) => {
            out.write_all(&TYPE_I32.to_le_bytes())?;
            out.write_all(&v.to_le_bytes())
        }
        Value::F32(v) => {
            out.write_all(&TYPE_F32.to_le_bytes())?;
            out.write_all(&v.to_le_bytes())
        }
        Value::Bool(v) => {
            out.write_all(&TYPE_BOOL.to_le_bytes())?;
            out.write_all(&[u8::from(*v)])
        }
        Value::String(s) => {
            out.write_all(&TYPE_STRING.to_le_bytes())?;
            put_str(out, s)
        }
        Value::Strings(items) => {
            array_header(out, TYPE_STRING, items.len())?;
            items.iter().try_for_each(|s| put_str(out, s))
        }
        Value::I32s(items) => {
            array_header(out, TYPE_I32, items.len())?;
            items
                .iter()
                .try_for_each(|v| out.write_all(&v.to_le_bytes()))
        }
        Value::F32s(items) => {
            array_header(out, TYPE_F32, items.len())?;
            items
                .iter()
                .try_for_each(|v| out.write_all(&v.to_le_bytes()))
        }
    }
}

fn array_header(out: &mut impl Write, element: u32, len: usize) -> io::Result<()> {
    out.write_all(&TYPE_ARRAY.to_le_bytes())?;
    out.write_all(&element.to_le_bytes())?;
    out.write_all(&(len as u64).to_le_bytes())
}

/// A GGUF file being written: [`Writer::new`] writes the header, then [`Writer::tensor`] takes
/// each tensor's bytes in the order described, and [`Writer::finish`] checks that all came.
pub struct Writer<W: Write + Seek> {
    out: W,
    tensors: Vec<TensorInfo>,
    next: usize,
    data_start: u64,
}

impl<W: Write + Seek> Writer<W> {
    /// Writes the header: the metadata in order, then every tensor's name, shape, type and
    /// offset.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: Vec<TensorInfo>,
    ) -> io::Result<Self> {
        out.write_all(b"GGUF")?;
        out.write_all(&3u32.to_le_bytes())?;
        out.write_all(&(tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(metadata.len() as u64).to_le_bytes())?;
        for (key, value) in metadata {
            put_str(&mut out, key)?;
            put_value(&mut out, value)?;
        }
        let mut offset = 0u64;
        for info in &tensors {
            put_str(&mut out, &info.name)?;
            out.write_all(&(info.shape.len() as u32).to_le_bytes())?;
            for dim in info.shape.iter().rev() {
                out.write_all(&dim.to_le_bytes())?;
            }
            out.write_all(&info.kind.ggml_id().to_le_bytes())?;
            out.write_all(&offset.to_le_bytes())?;
            offset += info.bytes() + padding(info.bytes());
        }
        let header_end = out.stream_position()?;
        out.write_all(&vec![0u8; padding(header_end) as usize])?;
        let data_start = out.stream_position()?;
        Ok(Self {
            out,
            tensors,
            next: 0,
            data_start,
        })
    }

    /// Writes the next tensor's bytes (exactly its size) and the padding after them.
    pub fn tensor(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(info) = self.tensors.get(self.next) else {
            return Err(io::Error::other("more tensors written than described"));
        };
        if bytes.len() as u64 != info.bytes() {
            return Err(io::Error::other(format!(
                "{}: {} bytes given, {} described",
                info.name,
                bytes.len(),
                info.bytes()
            )));
        }
        self.out.write_all(bytes)?;
        self.out
            .write_all(&vec![0u8; padding(bytes.len() as u64) as usize])?;
        self.next += 1;
        Ok(())
    }

    /// Checks every described tensor was written, flushes, and returns the writer and the
    /// offset where tensor data begins.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        if self.next != self.tensors.len() {
            return Err(io::Error::other(format!(
                "{} of {} tensors written",
                self.next,
                self.tensors.len()
            )));
        }
        self.out.flush()?;
        let end = self.out.stream_position()?;
        debug_assert!(end >= self.data_start);
        Ok((self.out, self.data_start))
    }
}
