//! The rows of a `COPY ... TO STDOUT (FORMAT binary)`, parsed in place.
//!
//! Why not the driver's rows: a copy batch moves each value once, from Postgres to `RowBinary`, and the driver's
//! per-row objects and per-value type checks cost the worker about a third of its CPU per row (perf, 2-core
//! machine), CPU that Postgres and ClickHouse need when they share the machine with it. Here a row is a slice of the
//! received bytes and the offsets of its fields; values are decoded by [`super::binary_values`] straight from it.
//!
//! The format (Postgres manual, "COPY", Binary Format): an 11-byte signature, a flags word and a header extension,
//! then per row a field count (`int16`) and per field its length (`int32`, -1 for NULL) and bytes, then a count of
//! -1. Rows usually arrive one per protocol message, but nothing here relies on it.

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Why the stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CopyOutError {
    /// The connection failed or Postgres raised an error (it says why).
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The bytes are not binary `COPY` data.
    #[error("Postgres sent malformed binary COPY data: {0}")]
    Malformed(&'static str),
}

/// One row: its fields as slices of the received bytes.
#[derive(Debug, Clone, Copy)]
pub struct BinaryRow<'a> {
    data: &'a [u8],
    fields: &'a [Option<(usize, usize)>],
}

impl<'a> BinaryRow<'a> {
    /// Field `index`'s bytes, `None` for NULL.
    ///
    /// # Panics
    /// When the row has no such field: the statement's select list decides the fields, so that is a bug.
    pub fn field(&self, index: usize) -> Option<&'a [u8]> {
        self.fields[index].map(|(start, end)| &self.data[start..end])
    }
}

/// The rows of one binary `COPY` out, read from its stream of protocol messages.
pub struct BinaryRows<'c> {
    chunks: BoxStream<'c, Result<bytes::Bytes, sqlx::Error>>,
    buffer: BytesMut,
    /// Bytes of `buffer` that belong to the row last returned, dropped when the next is asked for.
    consumed: usize,
    fields: Vec<Option<(usize, usize)>>,
    started: bool,
    ended: bool,
}

enum Parsed {
    Row(usize),
    Trailer,
    NeedMore,
}

impl<'c> BinaryRows<'c> {
    /// Reads the rows of `chunks` (from the driver's `copy_out_raw`).
    pub fn new(chunks: BoxStream<'c, Result<bytes::Bytes, sqlx::Error>>) -> Self {
        Self {
            chunks,
            buffer: BytesMut::new(),
            consumed: 0,
            fields: Vec::new(),
            started: false,
            ended: false,
        }
    }

    /// The next row, or `None` once the trailer is read and the stream has ended (the connection is then ready for
    /// its next statement).
    pub async fn next(&mut self) -> Result<Option<BinaryRow<'_>>, CopyOutError> {
        self.buffer.advance(self.consumed);
        self.consumed = 0;
        if self.ended {
            return Ok(None);
        }
        loop {
            match self.parse()? {
                Parsed::Row(len) => {
                    self.consumed = len;
                    return Ok(Some(BinaryRow {
                        data: &self.buffer[..len],
                        fields: &self.fields,
                    }));
                }
                Parsed::Trailer => {
                    self.ended = true;
                    while let Some(chunk) = self.chunks.next().await {
                        if !chunk?.is_empty() {
                            return Err(CopyOutError::Malformed("data after the trailer"));
                        }
                    }
                    return Ok(None);
                }
                Parsed::NeedMore => match self.chunks.next().await {
                    Some(chunk) => self.buffer.extend_from_slice(&chunk?),
                    None => return Err(CopyOutError::Malformed("the stream ended inside a row")),
                },
            }
        }
    }

    fn parse(&mut self) -> Result<Parsed, CopyOutError> {
        if !self.started {
            const FIXED: usize = SIGNATURE.len() + 8;
            if self.buffer.len() < FIXED {
                return Ok(Parsed::NeedMore);
            }
            if &self.buffer[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyOutError::Malformed("no PGCOPY signature"));
            }
            let extension = be_i32(&self.buffer[FIXED - 4..FIXED]);
            let extension = usize::try_from(extension)
                .map_err(|_| CopyOutError::Malformed("negative header extension length"))?;
            if self.buffer.len() < FIXED + extension {
                return Ok(Parsed::NeedMore);
            }
            self.buffer.advance(FIXED + extension);
            self.started = true;
        }
        let data = &self.buffer[..];
        if data.len() < 2 {
            return Ok(Parsed::NeedMore);
        }
        let count = i16::from_be_bytes([data[0], data[1]]);
        if count == -1 {
            return Ok(Parsed::Trailer);
        }
        let count =
            usize::try_from(count).map_err(|_| CopyOutError::Malformed("negative field count"))?;
        self.fields.clear();
        let mut at = 2;
        for _ in 0..count {
            let Some(length) = data.get(at..at + 4) else {
                return Ok(Parsed::NeedMore);
            };
            let length = be_i32(length);
            at += 4;
            if length == -1 {
                self.fields.push(None);
                continue;
            }
            let length = usize::try_from(length)
                .map_err(|_| CopyOutError::Malformed("negative field length"))?;
            if data.len() < at + length {
                return Ok(Parsed::NeedMore);
            }
            self.fields.push(Some((at, at + length)));
            at += length;
        }
        Ok(Parsed::Row(at))
    }
}

fn be_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes(bytes.try_into().expect("four bytes"))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use bytes::Bytes;

    fn header() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0i32.to_be_bytes());
        out.extend(3i32.to_be_bytes());
        out.extend(b"ext");
        out
    }

    /// Appends `fields` as binary `COPY` writes them (rows and array elements alike): a length, -1 for NULL, then
    /// the bytes.
    pub(in super::super) fn put_fields(out: &mut Vec<u8>, fields: &[Option<&[u8]>]) {
        for field in fields {
            match field {
                Some(bytes) => {
                    out.extend((bytes.len() as i32).to_be_bytes());
                    out.extend(*bytes);
                }
                None => out.extend((-1i32).to_be_bytes()),
            }
        }
    }

    fn row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (fields.len() as i16).to_be_bytes().to_vec();
        put_fields(&mut out, fields);
        out
    }

    fn rows_of(chunks: Vec<Vec<u8>>) -> BinaryRows<'static> {
        let chunks = chunks.into_iter().map(|c| Ok(Bytes::from(c)));
        BinaryRows::new(futures_util::stream::iter(chunks).boxed())
    }

    async fn read_all(mut rows: BinaryRows<'_>) -> Result<Vec<Vec<Option<Vec<u8>>>>, CopyOutError> {
        let mut out = Vec::new();
        while let Some(row) = rows.next().await? {
            out.push(
                (0..2)
                    .map(|i| row.field(i).map(<[u8]>::to_vec))
                    .collect::<Vec<_>>(),
            );
        }
        Ok(out)
    }

    fn expected() -> Vec<Vec<Option<Vec<u8>>>> {
        vec![
            vec![Some(b"abc".to_vec()), None],
            vec![Some(Vec::new()), Some(b"x".to_vec())],
        ]
    }

    #[tokio::test]
    async fn rows_are_read_whatever_the_message_boundaries() {
        let first = row(&[Some(b"abc"), None]);
        let second = row(&[Some(b""), Some(b"x")]);
        let trailer = (-1i16).to_be_bytes().to_vec();
        let whole = [header(), first.clone(), second.clone(), trailer.clone()].concat();

        // As Postgres sends them: the header with the first row, then a message per row, then the trailer.
        let as_sent = vec![[header(), first].concat(), second, trailer];
        assert_eq!(read_all(rows_of(as_sent)).await.unwrap(), expected());
        // One byte per message.
        let bytewise = whole.iter().map(|b| vec![*b]).collect();
        assert_eq!(read_all(rows_of(bytewise)).await.unwrap(), expected());
        // All in one.
        assert_eq!(read_all(rows_of(vec![whole])).await.unwrap(), expected());
    }

    #[tokio::test]
    async fn a_stream_cut_short_or_without_the_signature_is_an_error() {
        let cut = [header(), row(&[Some(b"abc"), None])[..7].to_vec()].concat();
        assert!(matches!(
            read_all(rows_of(vec![cut])).await,
            Err(CopyOutError::Malformed("the stream ended inside a row"))
        ));
        let text = b"abc\t\\N\n".to_vec();
        assert!(matches!(
            read_all(rows_of(vec![text.repeat(3)])).await,
            Err(CopyOutError::Malformed("no PGCOPY signature"))
        ));
    }
}
