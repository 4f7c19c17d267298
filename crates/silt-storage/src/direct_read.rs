//! Range reads of the local-directory object store with `O_DIRECT`: the bytes go from the
//! device straight into the buffer the block cache keeps, with no page-cache copy (which cost a
//! sixth of the agent's CPU in a catch-up read) and no zeroing pass over a fresh buffer.
//!
//! Only a plain bounded range read takes this path; whole-object reads, conditional reads, a
//! range that starts past the end, a missing object and every error go to
//! [`LocalFileSystem`]'s own reads, so their answers and errors are exactly its own.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path as FsPath;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResult, GetResultPayload, ObjectMeta};

/// Alignment of `O_DIRECT` offsets, lengths and buffers.
const ALIGN: u64 = 4096;

/// The bounded range `options` asks for, if the read is one this path serves.
pub(crate) fn plain_range(options: &GetOptions) -> Option<Range<u64>> {
    let plain = options.if_match.is_none()
        && options.if_none_match.is_none()
        && options.if_modified_since.is_none()
        && options.if_unmodified_since.is_none()
        && options.version.is_none()
        && !options.head;
    match &options.range {
        Some(GetRange::Bounded(r)) if plain && r.start < r.end => Some(r.clone()),
        _ => None,
    }
}

/// Reads `range` of the file at `path` with `O_DIRECT` (the end clamped to the file's size, as
/// a bounded GET is). `Ok(None)`: not this path's to answer (the filesystem refuses `O_DIRECT`,
/// the object is missing, the range starts past its end).
pub(crate) fn read(
    location: &Path,
    path: &FsPath,
    range: Range<u64>,
) -> io::Result<Option<GetResult>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let size = meta.len();
    if range.start >= size {
        return Ok(None);
    }
    let range = range.start..range.end.min(size);
    let Some(data) = read_aligned(&file, range.clone())? else {
        return Ok(None);
    };
    let mtime = meta.mtime() * 1_000_000 + meta.mtime_nsec() / 1_000;
    let object = ObjectMeta {
        location: location.clone(),
        last_modified: chrono::DateTime::from_timestamp_micros(mtime).unwrap_or_default(),
        size,
        e_tag: Some(format!("\"{:x}-{:x}-{:x}\"", meta.ino(), mtime, size)),
        version: None,
    };
    Ok(Some(GetResult {
        payload: GetResultPayload::Stream(Box::pin(futures::stream::once(async move { Ok(data) }))),
        meta: object,
        range,
        attributes: Default::default(),
        extensions: Default::default(),
    }))
}

/// `range` of `file` (inside its size), read over the aligned span that covers it into one
/// aligned buffer; the result is a slice of that buffer. `None` if `O_DIRECT` reads fail with
/// `EINVAL` (an unaligned device block size).
fn read_aligned(file: &File, range: Range<u64>) -> io::Result<Option<Bytes>> {
    let start = range.start / ALIGN * ALIGN;
    let end = range.end.div_ceil(ALIGN) * ALIGN;
    let span = (end - start) as usize;
    // Large buffers come zeroed from the kernel (calloc of fresh pages): no pass over them.
    let mut buf = vec![0u8; span + ALIGN as usize];
    let lead = buf.as_ptr().align_offset(ALIGN as usize);
    let want = (range.end - start) as usize;
    let mut filled = 0usize;
    while filled < want {
        // Whole aligned blocks from an aligned offset; the last may be short at the file's end.
        let at = filled / ALIGN as usize * ALIGN as usize;
        let window = &mut buf[lead + at..lead + span];
        match file.read_at(window, start + at as u64) {
            Ok(0) => break,
            Ok(n) => filled = at + n,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if filled < want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the file ended {} bytes before the range read",
                want - filled
            ),
        ));
    }
    let from = lead + (range.start - start) as usize;
    Ok(Some(
        Bytes::from(buf).slice(from..from + (range.end - range.start) as usize),
    ))
}
