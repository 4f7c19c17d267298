//! Bytes in pieces: what a read of stored record batches returns without gluing its pieces
//! together. A range read through the block cache is a slice of each block it spans; the
//! batches of a partition read from several ranges are a slice of each range. A [`Rope`] keeps
//! them as they are (every piece a [`Bytes`] sharing its buffer) until the response is written
//! with one vectored write, so a fetch copies no record bytes in the agent.
//!
//! Batches may straddle pieces: [`Rope::batches`] reads each header across a boundary.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BatchHeader, HEADER_LEN};

/// Bytes as a sequence of pieces. Cloning clones the handles, not the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rope {
    pieces: Vec<Bytes>,
    len: usize,
}

impl From<Bytes> for Rope {
    fn from(b: Bytes) -> Self {
        let mut r = Rope::default();
        r.push(b);
        r
    }
}

impl Rope {
    /// Appends a piece (an empty one is dropped).
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.pieces.push(b);
        }
    }

    /// Appends every piece of `other`.
    pub fn append(&mut self, other: Rope) {
        for p in other.pieces {
            self.push(p);
        }
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// The bytes in one buffer: the piece itself if there is one, else a copy.
    pub fn contiguous(&self) -> Bytes {
        match self.pieces.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len);
                for p in many {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }

    /// Bytes `range` as a rope of slices of the pieces (no copy). Panics if out of bounds, as
    /// slicing does.
    pub fn slice(&self, range: Range<usize>) -> Rope {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} out of a rope of {} bytes",
            self.len
        );
        let mut out = Rope::default();
        let mut at = 0usize;
        for p in &self.pieces {
            let (start, end) = (at, at + p.len());
            at = end;
            if end <= range.start {
                continue;
            }
            if start >= range.end {
                break;
            }
            let from = range.start.max(start) - start;
            let to = range.end.min(end) - start;
            out.push(p.slice(from..to));
        }
        out
    }

    /// Copies bytes from `pos` into `buf`; false if the rope ends first.
    pub fn read_at(&self, pos: usize, buf: &mut [u8]) -> bool {
        if pos.checked_add(buf.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        let mut filled = 0usize;
        let mut at = 0usize;
        for p in &self.pieces {
            let end = at + p.len();
            if end > pos + filled && filled < buf.len() {
                let from = pos + filled - at;
                let n = (p.len() - from).min(buf.len() - filled);
                buf[filled..filled + n].copy_from_slice(&p[from..from + n]);
                filled += n;
            }
            at = end;
            if filled == buf.len() {
                break;
            }
        }
        filled == buf.len()
    }

    /// The header of the batch at `pos`, read across pieces if it straddles them.
    pub fn header_at(&self, pos: usize) -> Result<BatchHeader, batch::BatchError> {
        let mut head = [0u8; HEADER_LEN];
        if self.read_at(pos, &mut head) {
            batch::parse_header(&head)
        } else {
            // Too short: the parser says so.
            batch::parse_header(&[])
        }
    }

    /// The whole record batches at the start of the rope, as [`batch::iter`] finds them in one
    /// buffer: each header and its byte range; stops at the first that is cut short or does not
    /// parse.
    pub fn batches(&self) -> impl Iterator<Item = (BatchHeader, Range<usize>)> + '_ {
        let mut pos = 0usize;
        // Where the piece holding `pos` starts, and its index: batches are read in order, so
        // the walk over pieces never goes back.
        let mut piece = (0usize, 0usize);
        std::iter::from_fn(move || {
            while piece.0 < self.pieces.len() && piece.1 + self.pieces[piece.0].len() <= pos {
                piece.1 += self.pieces[piece.0].len();
                piece.0 += 1;
            }
            let p = self.pieces.get(piece.0)?;
            let from = pos - piece.1;
            let h = if p.len() - from >= HEADER_LEN {
                batch::parse_header(&p[from..]).ok()?
            } else {
                self.header_at(pos).ok()?
            };
            let end = pos.checked_add(h.size)?;
            if end > self.len {
                return None;
            }
            let range = pos..end;
            pos = end;
            Some((h, range))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// splitmix64, for seeded shapes (the crate's tests share it).
    pub(crate) fn next(s: &mut u64) -> u64 {
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Batches of random sizes back to back, then cut in random places (pieces from 1 byte to
    /// several batches): every way of reading the rope agrees with the one buffer.
    #[test]
    fn a_rope_reads_as_the_buffer_it_was_cut_from() {
        for seed in 0..300u64 {
            let mut s = seed;
            let mut whole = BytesMut::new();
            let mut offset = 0i64;
            for _ in 0..(1 + next(&mut s) % 6) {
                let n = 1 + (next(&mut s) % 40) as i32;
                let mut b = BytesMut::from(&batch::tests::batch(n, -1, -1)[..]);
                b[..8].copy_from_slice(&offset.to_be_bytes());
                offset += n as i64;
                whole.extend_from_slice(&b);
            }
            // Sometimes a batch cut short at the end, as a bounded read leaves it.
            if seed.is_multiple_of(3) {
                let cut = batch::tests::batch(5, -1, -1);
                whole.extend_from_slice(&cut[..(next(&mut s) as usize % cut.len())]);
            }
            let whole = whole.freeze();
            let mut rope = Rope::default();
            let mut at = 0usize;
            while at < whole.len() {
                let n = match next(&mut s) % 4 {
                    0 => 1 + next(&mut s) as usize % 8,
                    1 => 1 + next(&mut s) as usize % 100,
                    _ => 1 + next(&mut s) as usize % 900,
                };
                let end = (at + n).min(whole.len());
                rope.push(whole.slice(at..end));
                at = end;
            }
            assert_eq!(rope.len(), whole.len());
            assert_eq!(rope.contiguous(), whole, "seed {seed}");
            let expect: Vec<_> = batch::iter(&whole).collect();
            let got: Vec<_> = rope.batches().collect();
            assert_eq!(got.len(), expect.len(), "seed {seed}");
            for ((gh, gr), (eh, er)) in got.iter().zip(&expect) {
                assert_eq!(gr, er, "seed {seed}");
                assert_eq!(gh.base_offset, eh.base_offset, "seed {seed}");
                assert_eq!(gh.size, eh.size, "seed {seed}");
            }
            for _ in 0..20 {
                let a = next(&mut s) as usize % (whole.len() + 1);
                let b = a + next(&mut s) as usize % (whole.len() - a + 1);
                assert_eq!(
                    rope.slice(a..b).contiguous(),
                    whole.slice(a..b),
                    "seed {seed}"
                );
                let mut buf = vec![0u8; b - a];
                assert!(rope.read_at(a, &mut buf));
                assert_eq!(&buf[..], &whole[a..b]);
            }
            let mut past = [0u8; 2];
            assert!(!rope.read_at(whole.len() - 1, &mut past));
        }
    }

    /// Slicing keeps the buffers it slices: no record byte is copied.
    #[test]
    fn slicing_shares_the_pieces() {
        let a = Bytes::from(vec![1u8; 100]);
        let b = Bytes::from(vec![2u8; 100]);
        let mut r = Rope::from(a.clone());
        r.push(b.clone());
        r.push(Bytes::new());
        assert_eq!(r.pieces().len(), 2);
        let s = r.slice(50..150);
        assert_eq!(s.pieces().len(), 2);
        assert_eq!(s.pieces()[0].as_ptr(), a[50..].as_ptr());
        assert_eq!(s.pieces()[1].as_ptr(), b.as_ptr());
        assert_eq!(Rope::from(a.clone()).contiguous().as_ptr(), a.as_ptr());
        assert!(r.slice(100..100).is_empty());
    }
}
