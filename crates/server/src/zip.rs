//! A minimal ZIP writer for bulk downloads: entries are stored uncompressed (PNGs are already
//! compressed, so deflating them again would cost CPU for nothing). No ZIP64: a download is
//! refused when it would exceed the classic format's 4 GiB limits.

use std::io::{self, Write};

struct Entry {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
}

/// Writes a ZIP archive to `out`, one stored entry at a time.
pub struct ZipWriter<W: Write> {
    out: W,
    entries: Vec<Entry>,
    offset: u64,
}

fn too_big() -> io::Error {
    io::Error::other("bulk download exceeds 4 GiB")
}

/// 1980-01-01 00:00 in DOS time/date format (a fixed, valid stamp: entries carry no mtime).
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;

impl<W: Write> ZipWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            entries: Vec::new(),
            offset: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Adds one file.
    pub fn add(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| too_big())?;
        let offset = u32::try_from(self.offset).map_err(|_| too_big())?;
        let name_len =
            u16::try_from(name.len()).map_err(|_| io::Error::other("entry name too long"))?;
        let crc = crc32fast::hash(data);
        let mut header = Vec::with_capacity(30 + name.len());
        header.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        header.extend_from_slice(&20u16.to_le_bytes()); // version needed
        header.extend_from_slice(&0x0800u16.to_le_bytes()); // UTF-8 names
        header.extend_from_slice(&0u16.to_le_bytes()); // stored
        header.extend_from_slice(&DOS_TIME.to_le_bytes());
        header.extend_from_slice(&DOS_DATE.to_le_bytes());
        header.extend_from_slice(&crc.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes());
        header.extend_from_slice(&name_len.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes());
        header.extend_from_slice(name.as_bytes());
        self.put(&header)?;
        self.put(data)?;
        self.entries.push(Entry {
            name: name.to_owned(),
            crc,
            size,
            offset,
        });
        Ok(())
    }

    /// Writes the central directory and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        let start = u32::try_from(self.offset).map_err(|_| too_big())?;
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            let mut rec = Vec::with_capacity(46 + e.name.len());
            rec.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            rec.extend_from_slice(&20u16.to_le_bytes()); // made by
            rec.extend_from_slice(&20u16.to_le_bytes()); // needed
            rec.extend_from_slice(&0x0800u16.to_le_bytes());
            rec.extend_from_slice(&0u16.to_le_bytes());
            rec.extend_from_slice(&DOS_TIME.to_le_bytes());
            rec.extend_from_slice(&DOS_DATE.to_le_bytes());
            rec.extend_from_slice(&e.crc.to_le_bytes());
            rec.extend_from_slice(&e.size.to_le_bytes());
            rec.extend_from_slice(&e.size.to_le_bytes());
            rec.extend_from_slice(
                &u16::try_from(e.name.len())
                    .unwrap_or(u16::MAX)
                    .to_le_bytes(),
            );
            rec.extend_from_slice(&0u16.to_le_bytes()); // extra length
            rec.extend_from_slice(&0u16.to_le_bytes()); // comment length
            rec.extend_from_slice(&0u16.to_le_bytes()); // disk number
            rec.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            rec.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            rec.extend_from_slice(&e.offset.to_le_bytes());
            rec.extend_from_slice(e.name.as_bytes());
            self.put(&rec)?;
        }
        let size = u32::try_from(self.offset - u64::from(start)).map_err(|_| too_big())?;
        let count =
            u16::try_from(entries.len()).map_err(|_| io::Error::other("too many entries"))?;
        let mut end = Vec::with_capacity(22);
        end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&size.to_le_bytes());
        end.extend_from_slice(&start.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.put(&end)?;
        Ok(self.out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn u16_at(b: &[u8], i: usize) -> usize {
        usize::from(u16::from_le_bytes([b[i], b[i + 1]]))
    }

    fn u32_at(b: &[u8], i: usize) -> usize {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
    }

    /// Reads a stored-only archive back through its central directory: `(name, data)` pairs.
    pub(crate) fn read_back(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
        let end = zip.len() - 22;
        assert_eq!(u32_at(zip, end), 0x0605_4b50);
        let (count, mut at) = (u16_at(zip, end + 10), u32_at(zip, end + 16));
        let mut out = Vec::new();
        for _ in 0..count {
            assert_eq!(u32_at(zip, at), 0x0201_4b50);
            let (crc, size, name_len) = (
                u32_at(zip, at + 16),
                u32_at(zip, at + 20),
                u16_at(zip, at + 28),
            );
            let local = u32_at(zip, at + 42);
            let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
            assert_eq!(u32_at(zip, local), 0x0403_4b50);
            let data_at = local + 30 + u16_at(zip, local + 26) + u16_at(zip, local + 28);
            let data = zip[data_at..data_at + size].to_vec();
            assert_eq!(crc32fast::hash(&data) as usize, crc);
            out.push((name, data));
            at += 46 + name_len;
        }
        out
    }

    #[test]
    fn entries_read_back_intact() {
        let mut w = ZipWriter::new(Vec::new());
        w.add("general/a.png", b"hello").unwrap();
        w.add("user/b.png", &[0u8; 1000]).unwrap();
        let zip = w.finish().unwrap();
        let entries = read_back(&zip);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], ("general/a.png".to_owned(), b"hello".to_vec()));
        assert_eq!(entries[1].1.len(), 1000);
    }
}
