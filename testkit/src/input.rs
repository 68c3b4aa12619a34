//! A byte cursor over a fuzz (or test) input that never fails: an input
//! ends where it ends, and missing bytes read as zero.

/// Reads a fuzz input front to back. Reads past the end yield zeros and
/// empty slices, so a target's decoding never fails and every input
/// decodes to *something*.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let head = self.bytes(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }

    /// A length read as one byte (`max` ≤ 255) or two, capped at `max`,
    /// then that many bytes.
    pub fn chunk(&mut self, max: usize) -> &'a [u8] {
        let n = if max <= usize::from(u8::MAX) {
            usize::from(self.u8())
        } else {
            usize::from(self.u16())
        };
        self.bytes(n.min(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero_and_empty() {
        let mut input = Input::new(&[1, 2, 3]);
        assert_eq!(input.u16(), 0x0102);
        assert_eq!(input.u32(), 0x0300_0000);
        assert!(input.is_empty());
        assert_eq!(input.u8(), 0);
        assert_eq!(input.bytes(5), &[] as &[u8]);
    }

    #[test]
    fn chunks_take_a_capped_length_prefix() {
        let mut input = Input::new(&[5, b'a', b'b', b'c', b'd', b'e', b'f']);
        assert_eq!(input.chunk(3), b"abc");
        assert_eq!(input.rest(), b"def");
        let mut input = Input::new(&[0, 2, b'x', b'y', b'z']);
        assert_eq!(input.chunk(1000), b"xy");
    }
}
