//! Store-and-forward for telemetry: one file per window, named by seq, removed only when the
//! broker acknowledged it. Bounded by count and bytes; the oldest windows go first.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use crate::atomic_file::write_atomic;

pub struct Spool {
    dir: PathBuf,
    entries: VecDeque<(u64, u64)>,
    bytes: u64,
    max_windows: usize,
    max_bytes: u64,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

impl Spool {
    pub fn open(dir: &Path, max_windows: usize, max_bytes: u64) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            {
                Some(seq) => entries.push((seq, entry.metadata()?.len())),
                // Leftover temp files of an interrupted write.
                None => std::fs::remove_file(entry.path())?,
            }
        }
        entries.sort_unstable();
        let bytes = entries.iter().map(|(_, b)| b).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            entries: entries.into(),
            bytes,
            max_windows: max_windows.max(1),
            max_bytes,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_seq(&self) -> Option<u64> {
        self.entries.back().map(|(seq, _)| *seq)
    }

    /// Seqs waiting, oldest first.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|(seq, _)| *seq)
    }

    /// Appends a window; returns how many old windows were dropped to make room.
    pub fn push(&mut self, seq: u64, payload: &[u8]) -> io::Result<u64> {
        let size = payload.len() as u64;
        let mut dropped = 0;
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_windows || self.bytes + size > self.max_bytes)
        {
            if let Some((old, _)) = self.entries.front().copied() {
                self.remove(old)?;
                dropped += 1;
            }
        }
        write_atomic(&self.dir.join(file_name(seq)), payload)?;
        self.entries.push_back((seq, size));
        self.bytes += size;
        Ok(dropped)
    }

    pub fn read(&self, seq: u64) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(file_name(seq)))
    }

    /// The broker has the window: forget it. Unknown seqs (already dropped) are fine.
    pub fn ack(&mut self, seq: u64) -> io::Result<bool> {
        self.remove(seq)
    }

    fn remove(&mut self, seq: u64) -> io::Result<bool> {
        let Some(pos) = self.entries.iter().position(|(s, _)| *s == seq) else {
            return Ok(false);
        };
        match std::fs::remove_file(self.dir.join(file_name(seq))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some((_, size)) = self.entries.remove(pos) {
            self.bytes -= size;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_survive_reopen_in_order_until_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 10, 1 << 20).expect("open");
        for seq in [3, 4, 5] {
            assert_eq!(s.push(seq, format!("w{seq}").as_bytes()).expect("push"), 0);
        }
        assert!(s.ack(4).expect("ack"));
        assert!(!s.ack(4).expect("second ack is a no-op"));
        let s = Spool::open(dir.path(), 10, 1 << 20).expect("reopen");
        assert_eq!(s.seqs().collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(s.read(5).expect("read"), b"w5");
        assert_eq!(s.max_seq(), Some(5));
    }

    #[test]
    fn bounded_by_count_and_bytes_dropping_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 3, 1 << 20).expect("open");
        let dropped: u64 = (1..=5).map(|seq| s.push(seq, b"x").expect("push")).sum();
        assert_eq!(dropped, 2);
        assert_eq!(s.seqs().collect::<Vec<_>>(), vec![3, 4, 5]);
        let mut s = Spool::open(&dir.path().join("b"), 100, 10).expect("open");
        s.push(1, b"123456").expect("push");
        assert_eq!(s.push(2, b"123456").expect("push"), 1);
        assert_eq!(s.seqs().collect::<Vec<_>>(), vec![2]);
    }
}
