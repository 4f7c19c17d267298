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
}

impl LogFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("meta.log")
    }

    pub fn open(dir: &Path) -> io::Result<(Self, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let path = Self::path(dir);
        let mut data = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut data)?;
        }
        let (records, good) = decode_all(&data);
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
            },
            records,
        ))
    }

    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        let frame = encode_frame(rec);
        self.file.write_all(&frame)?;
        self.file.sync_data()?;
        self.len += frame.len() as u64;
        Ok(())
    }

    pub fn wants_compaction(&self, live_bytes: usize) -> bool {
        self.len > COMPACT_MIN_BYTES && self.len > 4 * live_bytes as u64
    }

    pub fn rewrite(&mut self, snapshot: &Record) -> io::Result<()> {
        let tmp = self.dir.join("meta.log.tmp");
        let frame = encode_frame(snapshot);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&frame)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, Self::path(&self.dir))?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new()
            .append(true)
            .open(Self::path(&self.dir))?;
        self.len = frame.len() as u64;
        Ok(())
    }
}

fn encode_frame(rec: &Record) -> Vec<u8> {
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
    let mut frame = Vec::with_capacity(p.len() + 8);
    frame.extend_from_slice(&(p.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&p).to_be_bytes());
    frame.extend_from_slice(&p);
    frame
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    p.extend_from_slice(&(b.len() as u32).to_be_bytes());
    p.extend_from_slice(b);
}

/// Decodes frames until the first bad one; returns them and the length of the good prefix.
fn decode_all(data: &[u8]) -> (Vec<Record>, u64) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while data.len() - pos >= 8 {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().unwrap());
        let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Some(rec) = decode_payload(payload) else {
            break;
        };
        out.push(rec);
        pos += 8 + len;
    }
    (out, pos as u64)
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
        let mut data = encode_frame(&rec);
        data.extend(encode_frame(&rec));
        let (recs, good) = decode_all(&data);
        assert_eq!(recs, vec![rec.clone(), rec.clone()]);
        assert_eq!(good as usize, data.len());
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let (recs, good) = decode_all(&data);
        assert_eq!(recs.len(), 1);
        assert_eq!(good as usize, data.len() / 2);
    }
}
