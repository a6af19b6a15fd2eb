//! The protobuf wire format, read-only: varints, tags, length-delimited
//! payloads and skipping. Every read is bounds-checked; nothing here knows
//! about Kubernetes or JSON.

use thiserror::Error;

/// A malformed byte sequence.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The data ends inside a value.
    #[error("the data ends in the middle of a value (truncated body?)")]
    Truncated,
    /// A varint longer than ten bytes.
    #[error("a varint is longer than 10 bytes")]
    VarintTooLong,
    /// A wire type protobuf does not define, or a deprecated group.
    #[error("wire type {0} is not supported")]
    BadWireType(u8),
    /// Field number 0 (or beyond the 29-bit range).
    #[error("field number {0} is invalid")]
    BadFieldNumber(u64),
}

/// How a field's value is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// int32, int64, bool, enums.
    Varint,
    /// double, fixed64.
    Fixed64,
    /// strings, bytes, messages, packed repeated scalars.
    Len,
    /// float, fixed32.
    Fixed32,
}

impl WireType {
    fn from_raw(raw: u8) -> Result<Self, WireError> {
        match raw {
            0 => Ok(WireType::Varint),
            1 => Ok(WireType::Fixed64),
            2 => Ok(WireType::Len),
            5 => Ok(WireType::Fixed32),
            other => Err(WireError::BadWireType(other)),
        }
    }
}

/// A cursor over one message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A base-128 varint.
    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarintTooLong)
    }

    /// A field key: field number and wire type.
    pub fn key(&mut self) -> Result<(u32, WireType), WireError> {
        let key = self.varint()?;
        let number = key >> 3;
        let number = u32::try_from(number)
            .ok()
            .filter(|n| (1..(1 << 29)).contains(n))
            .ok_or(WireError::BadFieldNumber(number))?;
        // The mask keeps the wire type to three bits, so the cast cannot truncate.
        let wire = WireType::from_raw((key & 7) as u8)?;
        Ok((number, wire))
    }

    /// `n` raw bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    /// A length-delimited payload.
    pub fn len_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        self.take(len)
    }

    /// Eight little-endian bytes.
    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| WireError::Truncated)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Skips a value of an unknown field.
    pub fn skip(&mut self, wire: WireType) -> Result<(), WireError> {
        match wire {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.take(8).map(drop),
            WireType::Len => self.len_delimited().map(drop),
            WireType::Fixed32 => self.take(4).map(drop),
        }
    }
}
