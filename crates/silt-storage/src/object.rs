//! The flush object: every partition's batches from one flush, then a footer that indexes them,
//! so GC, recovery and tools can read an object without the metadata store.
//!
//! ```text
//! object  := data footer footer_len:u32 magic:"SILTOBJ1"
//! data    := for each partition, its record batches back to back (base offsets already final)
//! footer  := version:u8(=1) count:u32 entry* crc32c(version..last entry):u32
//! entry   := topic_id:[16] partition:i32 pos:u64 len:u64 base_offset:i64 last_offset:i64
//!            max_timestamp:i64
//! ```
//!
//! All integers are big-endian. Persisted: readers must accept every version ever written.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

const MAGIC: &[u8; 8] = b"SILTOBJ1";
const VERSION: u8 = 1;
const ENTRY_LEN: usize = 16 + 4 + 8 + 8 + 8 + 8 + 8;
/// Footer bytes besides its entries: version, count, CRC, footer length, magic.
const FOOTER_FIXED: usize = 1 + 4 + 4 + 4 + 8;

/// One partition's range inside an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FooterEntry {
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition.
    pub partition: i32,
    /// Byte offset of the first batch.
    pub pos: u64,
    /// Bytes of batches.
    pub len: u64,
    /// First offset.
    pub base_offset: i64,
    /// Last offset (inclusive).
    pub last_offset: i64,
    /// Largest timestamp.
    pub max_timestamp: i64,
}

/// Builds one flush object.
#[derive(Debug, Default)]
pub struct ObjectBuilder {
    data: BytesMut,
    entries: Vec<FooterEntry>,
}

impl ObjectBuilder {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty object with room for `data_bytes` of batches from `partitions` partitions, so
    /// the finished object is one allocation of its own size (caches that hold it count what
    /// it takes).
    pub fn with_capacity(data_bytes: usize, partitions: usize) -> Self {
        Self {
            data: BytesMut::with_capacity(data_bytes + FOOTER_FIXED + partitions * ENTRY_LEN),
            entries: Vec::with_capacity(partitions),
        }
    }

    /// Appends one partition's contiguous batches; returns its footer entry.
    pub fn add(
        &mut self,
        topic_id: Uuid,
        partition: i32,
        batches: &[Bytes],
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
    ) -> FooterEntry {
        let pos = self.data.len() as u64;
        for b in batches {
            self.data.extend_from_slice(b);
        }
        let e = FooterEntry {
            topic_id,
            partition,
            pos,
            len: self.data.len() as u64 - pos,
            base_offset,
            last_offset,
            max_timestamp,
        };
        self.entries.push(e.clone());
        e
    }

    /// One partition's batches as an object's chunks — `batches` as they are, then the footer —
    /// without copying them into one buffer; and the footer entry.
    pub fn chunks(
        topic_id: Uuid,
        partition: i32,
        batches: &[Bytes],
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
    ) -> (Vec<Bytes>, FooterEntry) {
        let len: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let e = FooterEntry {
            topic_id,
            partition,
            pos: 0,
            len,
            base_offset,
            last_offset,
            max_timestamp,
        };
        let mut footer = ObjectBuilder::with_capacity(0, 1);
        footer.entries.push(e.clone());
        let mut out: Vec<Bytes> = batches.to_vec();
        let tail = footer.finish();
        out.push(tail);
        (out, e)
    }

    /// Bytes of batch data so far.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The finished object (the footer's CRC covers only the footer, so a footer alone is the
    /// tail of an object whose data is held elsewhere: [`Self::chunks`]).
    pub fn finish(mut self) -> Bytes {
        let start = self.data.len();
        self.data.put_u8(VERSION);
        self.data.put_u32(self.entries.len() as u32);
        for e in &self.entries {
            self.data.put_slice(e.topic_id.as_bytes());
            self.data.put_i32(e.partition);
            self.data.put_u64(e.pos);
            self.data.put_u64(e.len);
            self.data.put_i64(e.base_offset);
            self.data.put_i64(e.last_offset);
            self.data.put_i64(e.max_timestamp);
        }
        let crc = crc32c::crc32c(&self.data[start..]);
        self.data.put_u32(crc);
        let footer_len = (self.data.len() - start) as u32;
        self.data.put_u32(footer_len);
        self.data.put_slice(MAGIC);
        self.data.freeze()
    }
}

/// Why an object's footer could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a readable Silt flush object: {0}")]
pub struct FooterError(String);

/// Reads the footer of a whole object.
pub fn read_footer(object: &[u8]) -> Result<Vec<FooterEntry>, FooterError> {
    let err = |s: &str| FooterError(s.to_string());
    if object.len() < 12 || &object[object.len() - 8..] != MAGIC {
        return Err(err("missing magic trailer"));
    }
    let footer_len = u32::from_be_bytes(
        object[object.len() - 12..object.len() - 8]
            .try_into()
            .unwrap(),
    ) as usize;
    let start = object
        .len()
        .checked_sub(12 + footer_len)
        .ok_or_else(|| err("footer length exceeds object"))?;
    let footer = &object[start..object.len() - 12];
    if footer.len() < 9 {
        return Err(err("footer too short"));
    }
    let (body, crc) = footer.split_at(footer.len() - 4);
    if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().unwrap()) {
        return Err(err("footer checksum mismatch"));
    }
    let mut b = body;
    if b.get_u8() != VERSION {
        return Err(err("unknown footer version"));
    }
    let count = b.get_u32() as usize;
    if b.remaining() != count * ENTRY_LEN {
        return Err(err("footer entry count does not match its length"));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut id = [0u8; 16];
        b.copy_to_slice(&mut id);
        let e = FooterEntry {
            topic_id: Uuid::from_bytes(id),
            partition: b.get_i32(),
            pos: b.get_u64(),
            len: b.get_u64(),
            base_offset: b.get_i64(),
            last_offset: b.get_i64(),
            max_timestamp: b.get_i64(),
        };
        if e.pos + e.len > start as u64 {
            return Err(err("footer entry points past the data"));
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_in_chunks_is_the_object_built_whole() {
        let data = [Bytes::from(vec![1u8; 100]), Bytes::from(vec![2u8; 250])];
        let mut whole = ObjectBuilder::new();
        let a = whole.add(Uuid::nil(), 3, &data, 10, 20, 99);
        let whole = whole.finish();
        let (chunks, b) = ObjectBuilder::chunks(Uuid::nil(), 3, &data, 10, 20, 99);
        assert_eq!(a, b);
        assert_eq!(chunks.concat(), whole.to_vec());
    }

    #[test]
    fn a_presized_object_is_exactly_its_size() {
        let mut b = ObjectBuilder::with_capacity(300, 2);
        let data = [Bytes::from(vec![1u8; 100]), Bytes::from(vec![2u8; 200])];
        b.add(Uuid::nil(), 0, &data[..1], 0, 0, 0);
        b.add(Uuid::nil(), 1, &data[1..], 0, 0, 0);
        let cap = b.data.capacity();
        let object = b.finish();
        assert_eq!(object.len(), cap, "no growth, no slack");
    }

    #[test]
    fn footer_round_trips_and_locates_data() {
        let t = Uuid::new_v4();
        let mut b = ObjectBuilder::new();
        let e0 = b.add(
            t,
            0,
            &[Bytes::from_static(b"aaaa"), Bytes::from_static(b"bb")],
            0,
            9,
            5,
        );
        let e1 = b.add(t, 3, &[Bytes::from_static(b"ccc")], 100, 100, 7);
        let obj = b.finish();
        let entries = read_footer(&obj).unwrap();
        assert_eq!(entries, vec![e0.clone(), e1.clone()]);
        assert_eq!(&obj[e0.pos as usize..(e0.pos + e0.len) as usize], b"aaaabb");
        assert_eq!(&obj[e1.pos as usize..(e1.pos + e1.len) as usize], b"ccc");
    }

    #[test]
    fn damaged_footers_are_rejected() {
        let mut b = ObjectBuilder::new();
        b.add(Uuid::nil(), 0, &[Bytes::from_static(b"x")], 0, 0, 0);
        let obj = b.finish().to_vec();
        let mut bad = obj.clone();
        bad[3] ^= 0xff; // inside the footer body
        assert!(read_footer(&bad).is_err());
        assert!(read_footer(&obj[1..obj.len() - 1]).is_err());
        assert!(read_footer(b"short").is_err());
    }
}
