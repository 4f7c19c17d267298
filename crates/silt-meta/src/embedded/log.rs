//! The embedded store's durable log, `meta.log`.
//!
//! Layout (all integers big-endian), one frame per committed transaction:
//!
//! ```text
//! frame   := len:u32 crc32c(payload):u32 payload[len]
//! payload := revision:i64 count:u32 change*
//! change  := 1:u8 key value create_revision:i64 mod_revision:i64 version:i64 lease:i64   (put)
//!          | 2:u8 key                                                                 (delete)
//! key, value := len:u32 bytes
//! ```
//!
//! A frame is fsynced before the transaction is applied. On open, frames are read until the
//! first incomplete or corrupt one (a torn write from a crash), and the file is cut there.
//! When the log grows large relative to the live state it is rewritten as a single snapshot
//! frame (written to `meta.log.tmp`, fsynced, renamed over `meta.log`). This format is
//! persisted: change it only with a version bump and a reader for the old one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::state::{Change, Record};
use crate::kv::KeyValue;

const COMPACT_MIN_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug)]
pub(super) struct LogFile {
    dir: PathBuf,
    file: File,
    len: u64,
    /// Set when a write or fsync failed in a way that leaves the file's state unknown; every
    /// later append fails until the store is reopened (which recovers from the file).
    poisoned: bool,
    /// Held for the life of the store: one process per metadata directory.
    _lock: File,
}

/// Frames larger than this are never written (the length prefix is a u32).
const MAX_FRAME: usize = u32::MAX as usize;

impl LogFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("meta.log")
    }

    pub fn open(dir: &Path) -> io::Result<(Self, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another process (another silt agent?); each agent needs its own data_dir",
                    dir.display()
                ),
            ));
        }
        let path = Self::path(dir);
        let mut data = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut data)?;
        }
        let (records, good) = decode_all(&data)?;
        if (good as usize) < data.len() {
            tracing::warn!(path = %path.display(), kept = good, dropped = data.len() as u64 - good,
                "metadata log ends in an incomplete frame (a crash during a write); cutting it off");
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        file.set_len(good)?;
        file.sync_all()?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                file,
                len: good,
                poisoned: false,
                _lock: lock,
            },
            records,
        ))
    }

    /// Appends and fsyncs one frame. On failure the file is cut back to its last good length;
    /// if that, or the fsync, fails, the log refuses further writes (a retried fsync can report
    /// success for data that never reached the disk).
    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "the metadata log stopped taking writes after a failed write or fsync; restart the agent to recover it",
            ));
        }
        let frame = encode_frame(rec)?;
        if let Err(e) = self.file.write_all(&frame) {
            if self
                .file
                .set_len(self.len)
                .and_then(|_| self.file.sync_all())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(e);
        }
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(e);
        }
        self.len += frame.len() as u64;
        Ok(())
    }

    pub fn wants_compaction(&self, live_bytes: usize) -> bool {
        self.len > COMPACT_MIN_BYTES && self.len > 4 * live_bytes as u64
    }

    /// Replaces the log with one snapshot frame. A failure before the rename leaves the old log
    /// in place; after the rename the new file is used at once.
    pub fn rewrite(&mut self, snapshot: &Record) -> io::Result<()> {
        let tmp = self.dir.join("meta.log.tmp");
        let frame = encode_frame(snapshot)?;
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&frame)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, Self::path(&self.dir))?;
        match OpenOptions::new().append(true).open(Self::path(&self.dir)) {
            Ok(f) => {
                self.file = f;
                self.len = frame.len() as u64;
            }
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        }
        File::open(&self.dir)?.sync_all()
    }
}

fn encode_frame(rec: &Record) -> io::Result<Vec<u8>> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&rec.revision.to_be_bytes());
    p.extend_from_slice(&(rec.changes.len() as u32).to_be_bytes());
    for ch in &rec.changes {
        match ch {
            Change::Put(kv) => {
                p.push(1);
                put_bytes(&mut p, &kv.key);
                put_bytes(&mut p, &kv.value);
                for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                    p.extend_from_slice(&n.to_be_bytes());
                }
            }
            Change::Delete(key) => {
                p.push(2);
                put_bytes(&mut p, key);
            }
        }
    }
    if p.len() > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a metadata log frame of {} bytes exceeds the format's 4 GiB limit",
            p.len()
        )));
    }
    let mut frame = Vec::with_capacity(p.len() + 8);
    frame.extend_from_slice(&(p.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&p).to_be_bytes());
    frame.extend_from_slice(&p);
    Ok(frame)
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    p.extend_from_slice(&(b.len() as u32).to_be_bytes());
    p.extend_from_slice(b);
}

/// Decodes frames; returns them and the length of the good prefix. A bad frame at the end of
/// the file is a torn write (cut off); a bad frame followed by more data is corruption, and
/// opening fails rather than silently dropping what follows it.
fn decode_all(data: &[u8]) -> io::Result<(Vec<Record>, u64)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while data.len() - pos >= 8 {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().unwrap());
        let end = pos + 8 + len;
        let Some(payload) = data.get(pos + 8..end) else {
            break; // incomplete last frame: a torn write
        };
        let rec = (crc32c::crc32c(payload) == crc)
            .then(|| decode_payload(payload))
            .flatten();
        let Some(rec) = rec else {
            if end < data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "metadata log is corrupt at byte {pos} and has {} bytes after the bad frame; refusing to drop them. Restore the metadata directory from a backup",
                        data.len() - end
                    ),
                ));
            }
            break;
        };
        out.push(rec);
        pos = end;
    }
    Ok((out, pos as u64))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
}

fn decode_payload(p: &[u8]) -> Option<Record> {
    let mut r = Reader(p);
    let revision = r.i64()?;
    let count = r.u32()? as usize;
    let mut changes = Vec::with_capacity(count.min(p.len()));
    for _ in 0..count {
        match r.take(1)?[0] {
            1 => {
                let key = r.bytes()?;
                let value = r.bytes()?;
                changes.push(Change::Put(KeyValue {
                    key,
                    value,
                    create_revision: r.i64()?,
                    mod_revision: r.i64()?,
                    version: r.i64()?,
                    lease: r.i64()?,
                }));
            }
            2 => changes.push(Change::Delete(r.bytes()?)),
            _ => return None,
        }
    }
    r.0.is_empty().then_some(Record { revision, changes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_stop_at_corruption() {
        let rec = Record {
            revision: 9,
            changes: vec![
                Change::Put(KeyValue {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    create_revision: 3,
                    mod_revision: 9,
                    version: 2,
                    lease: 0,
                }),
                Change::Delete(b"gone".to_vec()),
            ],
        };
        let mut data = encode_frame(&rec).unwrap();
        data.extend(encode_frame(&rec).unwrap());
        let (recs, good) = decode_all(&data).unwrap();
        assert_eq!(recs, vec![rec.clone(), rec.clone()]);
        assert_eq!(good as usize, data.len());
        let mut torn = data.clone();
        let last = torn.len() - 1;
        torn[last] ^= 0xff;
        let (recs, good) = decode_all(&torn).unwrap();
        assert_eq!(recs.len(), 1, "a bad last frame is a torn write");
        assert_eq!(good as usize, torn.len() / 2);
        let mut middle = data.clone();
        middle[10] ^= 0xff;
        let err = decode_all(&middle).unwrap_err().to_string();
        assert!(
            err.contains("corrupt"),
            "a bad frame followed by data is corruption: {err}"
        );
    }

    #[test]
    fn one_process_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, _) = LogFile::open(dir.path()).unwrap();
        let err = LogFile::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another process"), "{err}");
    }
}
