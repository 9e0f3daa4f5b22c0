//! A digest of rows in `RowBinary`: how many rows, and an order-independent checksum of their bytes.
//!
//! The copy's verify phase digests both sides with this one reader: the Postgres rows as the copy would encode them,
//! and ClickHouse's answer to `SELECT ... FORMAT RowBinary` for the same keys. Equal digests mean the same multiset of
//! rows, whatever order each side returned them in. The reader streams: a value of any size is hashed piece by piece,
//! so memory stays bounded.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use super::ChType;

/// Bytes hashed per read of a long string.
const PIECE_BYTES: usize = 64 * 1024;

/// The count and checksum of a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowDigest {
    /// Rows read.
    pub rows: u64,
    /// Wrapping sum of each row's SHA-256 (first 8 bytes): independent of row order.
    pub checksum: u64,
}

/// A `RowBinary` stream that does not match its column types.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The stream ended inside a row, or could not be read.
    #[error("the RowBinary stream broke off inside row {row}: {source}")]
    Read {
        /// The 0-based row being read.
        row: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A nullable flag other than 0 or 1: the stream and the types disagree.
    #[error("row {row} has a NULL flag of {flag}; the stream does not match the column types")]
    BadFlag {
        /// The 0-based row being read.
        row: u64,
        /// The byte found.
        flag: u8,
    },
}

/// Reads `RowBinary` rows of `types` until the stream ends, cleanly at a row boundary.
pub async fn digest_rows<R: AsyncRead + Unpin>(
    reader: R,
    types: &[ChType],
) -> Result<RowDigest, DigestError> {
    let mut reader = BufReader::with_capacity(PIECE_BYTES, reader);
    let mut digest = RowDigest::default();
    let mut piece = vec![0u8; PIECE_BYTES];
    loop {
        let row = digest.rows;
        let read_error = |source| DigestError::Read { row, source };
        if tokio::io::AsyncBufReadExt::fill_buf(&mut reader)
            .await
            .map_err(read_error)?
            .is_empty()
        {
            return Ok(digest);
        }
        let mut hasher = Sha256::new();
        for ty in types {
            value(&mut reader, ty, &mut hasher, &mut piece, row).await?;
        }
        let hash = hasher.finalize();
        let head = u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"));
        digest.rows += 1;
        digest.checksum = digest.checksum.wrapping_add(head);
    }
}

/// Hashes one value of `ty`, reading exactly its bytes.
async fn value<R: AsyncRead + Unpin>(
    reader: &mut R,
    ty: &ChType,
    hasher: &mut Sha256,
    piece: &mut [u8],
    row: u64,
) -> Result<(), DigestError> {
    let read_error = |source| DigestError::Read { row, source };
    match ty {
        ChType::Nullable(inner) => {
            let flag = reader.read_u8().await.map_err(read_error)?;
            hasher.update([flag]);
            match flag {
                0 => Box::pin(value(reader, inner, hasher, piece, row)).await,
                1 => Ok(()),
                flag => Err(DigestError::BadFlag { row, flag }),
            }
        }
        ChType::Array(inner) => {
            let len = leb128(reader).await.map_err(read_error)?;
            hasher.update(len.to_le_bytes());
            for _ in 0..len {
                Box::pin(value(reader, inner, hasher, piece, row)).await?;
            }
            Ok(())
        }
        ChType::String => {
            let len = leb128(reader).await.map_err(read_error)?;
            hasher.update(len.to_le_bytes());
            hash_bytes(reader, len, hasher, piece)
                .await
                .map_err(read_error)
        }
        ChType::Map(key, val) => {
            let len = leb128(reader).await.map_err(read_error)?;
            hasher.update(len.to_le_bytes());
            for _ in 0..len {
                Box::pin(value(reader, key, hasher, piece, row)).await?;
                Box::pin(value(reader, val, hasher, piece, row)).await?;
            }
            Ok(())
        }
        fixed_type => {
            let width = fixed_type
                .fixed_width()
                .expect("every other type has a fixed width");
            fixed(reader, width, hasher, piece, row).await
        }
    }
}

/// Hashes a fixed-width value of `width` bytes.
async fn fixed<R: AsyncRead + Unpin>(
    reader: &mut R,
    width: usize,
    hasher: &mut Sha256,
    piece: &mut [u8],
    row: u64,
) -> Result<(), DigestError> {
    hash_bytes(reader, width as u64, hasher, piece)
        .await
        .map_err(|source| DigestError::Read { row, source })
}

async fn hash_bytes<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: u64,
    hasher: &mut Sha256,
    piece: &mut [u8],
) -> std::io::Result<()> {
    let mut left = len;
    while left > 0 {
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(piece.len());
        reader.read_exact(&mut piece[..take]).await?;
        hasher.update(&piece[..take]);
        left -= take as u64;
    }
    Ok(())
}

/// A LEB128 length, as `RowBinary` prefixes strings and arrays.
async fn leb128<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = reader.read_u8().await?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "a length prefix longer than 64 bits",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, n: Option<i32>, tags: &[&str]) -> Vec<u8> {
        let mut out = vec![id.len() as u8];
        out.extend_from_slice(id.as_bytes());
        match n {
            Some(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_le_bytes());
            }
            None => out.push(1),
        }
        out.push(tags.len() as u8);
        for tag in tags {
            out.push(tag.len() as u8);
            out.extend_from_slice(tag.as_bytes());
        }
        out
    }

    fn types() -> Vec<ChType> {
        vec![
            ChType::String,
            ChType::Nullable(Box::new(ChType::Int(32))),
            ChType::Array(Box::new(ChType::String)),
        ]
    }

    #[tokio::test]
    async fn the_digest_counts_rows_and_ignores_their_order_but_not_their_values() {
        let a = row("a", Some(1), &["x", "y"]);
        let b = row("b", None, &[]);
        let forward = [a.clone(), b.clone()].concat();
        let backward = [b.clone(), a.clone()].concat();
        let one = digest_rows(&forward[..], &types()).await.unwrap();
        assert_eq!(one.rows, 2);
        assert_eq!(one, digest_rows(&backward[..], &types()).await.unwrap());
        let changed = [row("a", Some(2), &["x", "y"]), b].concat();
        assert_ne!(one, digest_rows(&changed[..], &types()).await.unwrap());
        assert_eq!(
            digest_rows(&[][..], &types()).await.unwrap(),
            RowDigest::default()
        );
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_row_is_an_error_naming_the_row() {
        let a = row("a", Some(1), &["x"]);
        let cut = [a.clone(), a[..3].to_vec()].concat();
        let err = digest_rows(&cut[..], &types()).await.unwrap_err();
        assert!(err.to_string().contains("inside row 1"), "{err}");
    }
}
