//! Opening inputs: plain, gzip or bzip2 (by magic bytes, not by name), read line by line
//! with line numbers and UTF-8 checked per line, so errors can name the line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{CorpusError, Location};

const READ_BUFFER: usize = 1 << 20;

/// Opens `path`, transparently decompressing gzip and bzip2.
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, CorpusError> {
    let mut file = File::open(path).map_err(|e| CorpusError::io(path, e))?;
    let mut magic = [0u8; 3];
    let read = read_prefix(&mut file, &mut magic).map_err(|e| CorpusError::io(path, e))?;
    let file = File::open(path).map_err(|e| CorpusError::io(path, e))?;
    let reader: Box<dyn BufRead + Send> = match &magic[..read] {
        [0x1f, 0x8b, ..] => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            flate2::read::MultiGzDecoder::new(BufReader::new(file)),
        )),
        [b'B', b'Z', b'h'] => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            bzip2::read::MultiBzDecoder::new(BufReader::new(file)),
        )),
        _ => Box::new(BufReader::with_capacity(READ_BUFFER, file)),
    };
    Ok(reader)
}

fn read_prefix(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Reads a whole (possibly compressed) file as UTF-8 text.
pub fn read_to_string(path: &Path) -> Result<String, CorpusError> {
    let mut bytes = Vec::new();
    open(path)?.read_to_end(&mut bytes).map_err(|e| CorpusError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        CorpusError::invalid(Location::line(path, line), "invalid UTF-8")
    })
}

/// A line reader that reuses one buffer and reports 1-based line numbers.
pub struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    bytes: Vec<u8>,
    line: u64,
    /// Bytes consumed so far (decompressed).
    pub consumed: u64,
}

impl Lines {
    pub fn open(path: &Path) -> Result<Lines, CorpusError> {
        Ok(Lines {
            path: path.to_path_buf(),
            reader: open(path)?,
            bytes: Vec::with_capacity(1 << 16),
            line: 0,
            consumed: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next line without its line ending, with its number; `None` at the end.
    pub fn next_line(&mut self) -> Result<Option<(u64, &str)>, CorpusError> {
        self.bytes.clear();
        let read =
            self.reader.read_until(b'\n', &mut self.bytes).map_err(|e| CorpusError::io(&self.path, e))?;
        if read == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.consumed += read as u64;
        while matches!(self.bytes.last(), Some(b'\n' | b'\r')) {
            self.bytes.pop();
        }
        let text = std::str::from_utf8(&self.bytes).map_err(|e| {
            CorpusError::invalid(
                Location::line(&self.path, self.line),
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        Ok(Some((self.line, text)))
    }
}

/// The files to import for `path`: the file itself, or the files of a folder whose names
/// end with one of `extensions`, sorted by name so imports are reproducible.
pub fn files_in(path: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>, CorpusError> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(CorpusError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| CorpusError::io(path, e))? {
        let entry = entry.map_err(|e| CorpusError::io(path, e))?;
        let file = entry.path();
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if file.is_file() && extensions.iter().any(|ext| name.ends_with(ext)) {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn reads_plain_gzip_and_bzip2_alike() {
        let dir = tempfile::tempdir().unwrap();
        let text = "one\ntwo\r\nthree";
        let plain = dir.path().join("a.txt");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("a.gz");
        let mut encoder = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap();
        let bz = dir.path().join("a.bz2");
        let mut encoder = bzip2::write::BzEncoder::new(File::create(&bz).unwrap(), Default::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap();
        for path in [plain, gz, bz] {
            let mut lines = Lines::open(&path).unwrap();
            let mut seen = Vec::new();
            while let Some((number, line)) = lines.next_line().unwrap() {
                seen.push((number, line.to_string()));
            }
            assert_eq!(
                seen,
                vec![(1, "one".into()), (2, "two".into()), (3, "three".into())],
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        std::fs::write(&path, b"fine\nbad \xff here\n").unwrap();
        let mut lines = Lines::open(&path).unwrap();
        lines.next_line().unwrap();
        let error = lines.next_line().unwrap_err().to_string();
        assert!(error.ends_with("bad.txt:2: invalid UTF-8 at byte 4"), "{error}");
        let error = read_to_string(&path).unwrap_err().to_string();
        assert!(error.ends_with("bad.txt:2: invalid UTF-8"), "{error}");
    }
}
