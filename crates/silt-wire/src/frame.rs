//! Length-prefixed frames: a big-endian `i32` size, then that many bytes. The size is checked
//! against the limit before a single byte of the body is buffered.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read; every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The size prefix exceeds the configured maximum (or is negative).
    #[error("frame of {size} bytes exceeds the limit of {max} bytes (max_frame_bytes)")]
    TooLarge {
        /// Declared size.
        size: i64,
        /// The limit.
        max: usize,
    },
    /// The peer closed the connection mid-frame.
    #[error("connection closed after {got} of {want} bytes of a frame")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes declared.
        want: usize,
    },
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    match read_frame_size(r, max).await? {
        None => Ok(None),
        Some(size) => read_frame_body(r, size).await.map(Some),
    }
}

/// Reads a frame's size prefix and checks it against `max`; `Ok(None)` on a clean end of
/// stream. The caller may then wait (for memory) before [`read_frame_body`].
pub async fn read_frame_size<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<usize>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated { got, want: 4 });
        }
        got += n;
    }
    let size = i32::from_be_bytes(len) as i64;
    if size < 0 || size as u64 > max as u64 {
        return Err(FrameError::TooLarge { size, max });
    }
    Ok(Some(size as usize))
}

/// Reads a frame body of `size` bytes, straight into a buffer of that size (never zero-filled
/// first, never read past).
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    r: &mut R,
    size: usize,
) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let want = (size - buf.len()) as u64;
        let n = (&mut *r).take(want).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                got: buf.len(),
                want: size,
            });
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_and_complete() {
        let mut ok: &[u8] = &[0, 0, 0, 3, b'a', b'b', b'c'];
        assert_eq!(read_frame(&mut ok, 10).await.unwrap().unwrap(), &b"abc"[..]);
        assert!(read_frame(&mut ok, 10).await.unwrap().is_none());

        let mut big: &[u8] = &[0, 0, 1, 0];
        assert!(matches!(
            read_frame(&mut big, 10).await,
            Err(FrameError::TooLarge { size: 256, .. })
        ));
        let mut neg: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut neg, 10).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut short: &[u8] = &[0, 0, 0, 5, 1, 2];
        assert!(matches!(
            read_frame(&mut short, 10).await,
            Err(FrameError::Truncated { got: 2, want: 5 })
        ));
    }
}
