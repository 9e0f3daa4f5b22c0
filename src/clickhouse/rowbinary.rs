//! Writing the `RowBinary` insert format into a streamed request body, in bounded chunks.
//!
//! Rows are written into a small buffer that is handed to the HTTP request in chunks of [`CHUNK_BYTES`] through a
//! channel of [`CHANNEL_CHUNKS`] slots: memory stays bounded whatever the size of a row or of a batch, and a slow
//! server slows the writer down instead of filling memory.

use bytes::Bytes;
use futures_util::Stream;
use reqwest::Body;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

/// Size of the chunks handed to the HTTP client.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks that may wait in the channel.
const CHANNEL_CHUNKS: usize = 4;

type Chunk = Result<Bytes, std::io::Error>;

/// The request went away (the insert failed); the insert's own error says why.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the ClickHouse insert stopped reading its body")]
pub struct BodyClosed;

/// The writing end of a streamed request body.
pub struct BodyWriter {
    buffer: Vec<u8>,
    sender: mpsc::Sender<Chunk>,
    written: u64,
}

impl BodyWriter {
    /// A writer and the request body it feeds.
    pub fn channel() -> (BodyWriter, Body) {
        let (writer, chunks) = BodyWriter::chunked();
        (writer, Body::wrap_stream(chunks))
    }

    /// A writer and a reader of the bytes it writes (the verify phase digests rows this way instead of sending
    /// them). Like a request body, the reader ends with an error when the writer is aborted.
    pub fn pipe() -> (BodyWriter, impl AsyncRead + Send + Unpin + 'static) {
        let (writer, chunks) = BodyWriter::chunked();
        (writer, StreamReader::new(Box::pin(chunks)))
    }

    fn chunked() -> (BodyWriter, impl Stream<Item = Chunk> + Send + 'static) {
        let (sender, receiver) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
        let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        });
        let writer = BodyWriter {
            buffer: Vec::with_capacity(CHUNK_BYTES),
            sender,
            written: 0,
        };
        (writer, chunks)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends a small value (a number, a length prefix) to the buffer.
    pub fn put(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
    }

    /// Appends a LEB128 length, as `RowBinary` prefixes strings and arrays.
    pub fn put_len(&mut self, mut len: usize) {
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                self.put(&[byte]);
                return;
            }
            self.put(&[byte | 0x80]);
        }
    }

    /// Appends a `String` value: its length, then its bytes, copied chunk by chunk.
    pub async fn put_string(&mut self, bytes: &[u8]) -> Result<(), BodyClosed> {
        self.put_len(bytes.len());
        self.put_raw(bytes).await
    }

    /// Appends bytes of any size, handing full chunks to the request as it goes.
    pub async fn put_raw(&mut self, bytes: &[u8]) -> Result<(), BodyClosed> {
        if self.buffer.len() + bytes.len() <= CHUNK_BYTES {
            self.put(bytes);
            return Ok(());
        }
        for piece in bytes.chunks(CHUNK_BYTES) {
            self.put(piece);
            self.flush_full().await?;
        }
        Ok(())
    }

    /// Sends the buffer when it has reached a chunk's size.
    pub async fn flush_full(&mut self) -> Result<(), BodyClosed> {
        if self.buffer.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BodyClosed> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.sender
            .send(Ok(Bytes::from(chunk)))
            .await
            .map_err(|_| BodyClosed)
    }

    /// Sends what is left and ends the body: the server may now acknowledge the insert.
    pub async fn finish(mut self) -> Result<(), BodyClosed> {
        self.flush().await
    }

    /// Ends the body with an error, so that the server sees a broken request and inserts nothing of it.
    pub async fn abort(self, reason: &str) {
        let _ = self
            .sender
            .send(Err(std::io::Error::other(reason.to_owned())))
            .await;
    }
}

/// The length of a LEB128 length prefix.
pub fn len_of_len(len: usize) -> usize {
    let bits = usize::BITS - len.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lengths_are_leb128_and_long_strings_arrive_whole() {
        let (mut writer, body) = BodyWriter::channel();
        let long = "é".repeat(CHUNK_BYTES);
        let reader = tokio::spawn(async move {
            use http_body_util::BodyExt;
            let mut body = body;
            let mut all = Vec::new();
            while let Some(frame) = body.frame().await {
                let chunk = frame.unwrap().into_data().unwrap();
                assert!(chunk.len() <= CHUNK_BYTES + 16);
                all.extend_from_slice(&chunk);
            }
            all
        });
        writer.put_len(300);
        writer.put_string(long.as_bytes()).await.unwrap();
        let written = writer.written();
        writer.finish().await.unwrap();
        let all = reader.await.unwrap();
        assert_eq!(&all[..2], &[0xac, 0x02]);
        assert_eq!(all.len() as u64, written);
        assert_eq!(len_of_len(300), 2);
        assert_eq!(len_of_len(0), 1);
        assert_eq!(len_of_len(long.len()), 3);
        assert_eq!(&all[2..5], &[0x80, 0x80, 0x20]);
        assert_eq!(&all[5..], long.as_bytes());
    }
}
